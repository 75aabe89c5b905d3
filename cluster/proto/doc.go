// Package clusterpb is the generated protobuf and gRPC code of the control
// plane between the coordinator and its workers (control.proto; the service
// is described in docs/control-plane.md#the-grpc-service). It must not be
// edited by hand: change control.proto and run scripts/gen-proto.sh.
package clusterpb
