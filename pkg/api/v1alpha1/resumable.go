package v1alpha1

// Resumable reports whether the volume, once judged Lost, is made when its
// node is back: the node never made it (a made volume's size is recorded),
// so it holds no data that could have been lost with the node, and the
// CreateVolume that asked for it still stands.
func (tv *ThinVolume) Resumable() bool { return tv.Status.SizeBytes == 0 }

// Resumable: as ThinVolume.Resumable, for a snapshot never taken (a taken
// one has its creation time). A member of a group snapshot never is: it is
// its group's to take, and taken alone it would not be of the group's
// instant.
func (ts *ThinSnapshot) Resumable() bool {
	return ts.Status.CreationTime == nil && ts.Spec.GroupID == ""
}

// Resumable: as ThinSnapshot.Resumable, for a group never taken (a taken
// one has its creation time and its members). Its members' ThinSnapshots
// are made only once the group is Ready, so a group never taken has none
// that could be taken out of its instant.
func (g *ThinGroupSnapshot) Resumable() bool {
	return g.Status.CreationTime == nil && len(g.Status.Members) == 0
}
