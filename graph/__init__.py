"""bastion.graph"""
