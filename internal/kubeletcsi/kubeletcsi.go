// Package kubeletcsi decodes what the kubelet reads from a CSI node plugin
// in the form the kubelet's own CSI (spec 1.9) generated code has, so tests
// can check the driver's answer against the reader that matters rather than
// against the driver's encoder.
package kubeletcsi

import (
	"fmt"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// Condition is CSI 1.9's VolumeCondition.
type Condition struct {
	Abnormal bool
	Message  string
}

// statsResponse is CSI 1.9's NodeGetVolumeStatsResponse, reduced to the
// volume_condition field (usage is left to the unknown fields).
var statsResponse = func() protoreflect.MessageDescriptor {
	field := func(name string, num int32, typ descriptorpb.FieldDescriptorProto_Type, typeName string) *descriptorpb.FieldDescriptorProto {
		f := &descriptorpb.FieldDescriptorProto{
			Name: proto.String(name), Number: proto.Int32(num), Type: typ.Enum(),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
		}
		if typeName != "" {
			f.TypeName = proto.String(typeName)
		}
		return f
	}
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name: proto.String("kubeletcsi/csi19.proto"), Package: proto.String("csi.v1"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{
			{Name: proto.String("VolumeCondition"), Field: []*descriptorpb.FieldDescriptorProto{
				field("abnormal", 1, descriptorpb.FieldDescriptorProto_TYPE_BOOL, ""),
				field("message", 2, descriptorpb.FieldDescriptorProto_TYPE_STRING, ""),
			}},
			{Name: proto.String("NodeGetVolumeStatsResponse"), Field: []*descriptorpb.FieldDescriptorProto{
				field("volume_condition", 2, descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, ".csi.v1.VolumeCondition"),
			}},
		},
	}, new(protoregistry.Files))
	if err != nil {
		panic(err)
	}
	return fd.Messages().ByName("NodeGetVolumeStatsResponse")
}()

// VolumeCondition marshals resp and reads it back as the kubelet does: the
// condition, or nil when the response carries none.
func VolumeCondition(resp proto.Message) (*Condition, error) {
	b, err := proto.Marshal(resp)
	if err != nil {
		return nil, fmt.Errorf("marshal %T: %w", resp, err)
	}
	m := dynamicpb.NewMessage(statsResponse)
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("decode as CSI 1.9 NodeGetVolumeStatsResponse: %w", err)
	}
	f := statsResponse.Fields().ByName("volume_condition")
	if !m.Has(f) {
		return nil, nil
	}
	c := m.Get(f).Message()
	fs := c.Descriptor().Fields()
	return &Condition{Abnormal: c.Get(fs.ByName("abnormal")).Bool(), Message: c.Get(fs.ByName("message")).String()}, nil
}
