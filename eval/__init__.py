"""bastion.eval"""
