package node

// TryLockMount takes, without waiting, the locks that NodeUnstageVolume
// (the volume ID, also taken by stage and expand) and NodeUnpublishVolume
// (the target path) hold while they unmount, so that neither unmounts
// path while the scheduled trim (package trim) holds it open; an unmount
// then would fail busy. ok is false, and nothing is held, when either is
// taken: the trim skips the volume until its next round.
func (s *Server) TryLockMount(volumeID, path string) (unlock func(), ok bool) {
	unlockVolume, ok := s.locks.TryLock(volumeID)
	if !ok {
		return nil, false
	}
	unlockPath, ok := s.locks.TryLock(path)
	if !ok {
		unlockVolume()
		return nil, false
	}
	return func() { unlockPath(); unlockVolume() }, true
}
