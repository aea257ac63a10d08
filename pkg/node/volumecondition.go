package node

import (
	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/csi-thin/csi-thin/pkg/backend"
)

// The kubelet learns a volume's health from NodeGetVolumeStats: with its
// CSIVolumeHealth feature gate on, it asks whether the node service has the
// VOLUME_CONDITION capability (wire value 4) and then reads VolumeCondition
// (field 2 of the response, {bool abnormal = 1; string message = 2}), turning
// an abnormal one into a VolumeConditionAbnormal event on each pod using the
// volume. CSI 1.13, the spec this driver is built against, removed both
// names in favour of NodeGetVolumeHealth, which no kubelet calls (1.34 still
// speaks CSI 1.9). So both are sent by number; csi-sanity keeps accepting
// capability 4 for the same reason.
const (
	volumeConditionCapability csi.NodeServiceCapability_RPC_Type = 4
	statsVolumeConditionField protowire.Number                   = 2
	conditionAbnormalField    protowire.Number                   = 1
	conditionMessageField     protowire.Number                   = 2
)

// withVolumeCondition appends c, in the wire form the kubelet decodes, to
// resp. CSI has no reason field, so the reason leads the message, where it
// shows in the event.
func withVolumeCondition(resp *csi.NodeGetVolumeStatsResponse, c backend.Condition) *csi.NodeGetVolumeStatsResponse {
	msg := c.Message
	if c.Abnormal && c.Reason != "" {
		msg = c.Reason + ": " + msg
	}
	var cond []byte
	if c.Abnormal {
		cond = protowire.AppendTag(cond, conditionAbnormalField, protowire.VarintType)
		cond = protowire.AppendVarint(cond, 1)
	}
	if msg != "" {
		cond = protowire.AppendTag(cond, conditionMessageField, protowire.BytesType)
		cond = protowire.AppendString(cond, msg)
	}
	raw := protowire.AppendTag(nil, statsVolumeConditionField, protowire.BytesType)
	raw = protowire.AppendBytes(raw, cond)
	m := resp.ProtoReflect()
	m.SetUnknown(append(m.GetUnknown(), raw...))
	return resp
}
