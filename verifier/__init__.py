"""bastion.verifier"""
