"""bastion.policy"""
