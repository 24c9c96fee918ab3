"""Generated gRPC stubs for the bastion.v1 contracts (proto/bastion/v1). Do not edit: run `make protos`."""
