"""Generated gRPC stubs for tailor.agent.v1 (scripts/gen-proto.sh) and the
proto they come from. Do not edit the *_pb2* files by hand."""
