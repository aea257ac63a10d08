package controller

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ParamFreeze is the VolumeSnapshotClass parameter that turns off freezing
// the source's mounted filesystem for the snapshot ("false"; "true", the
// default, freezes where the backend can: see package freeze).
const ParamFreeze = "freeze"

// skipFreeze reads ParamFreeze from a CreateSnapshot's parameters.
func skipFreeze(params map[string]string) (bool, error) {
	switch v, ok := params[ParamFreeze]; {
	case !ok, v == "true":
		return false, nil
	case v == "false":
		return true, nil
	default:
		return false, status.Errorf(codes.InvalidArgument, "VolumeSnapshotClass parameter %s=%.64q: want \"true\" or \"false\"", ParamFreeze, v)
	}
}
