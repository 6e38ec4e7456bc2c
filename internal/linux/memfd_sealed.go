package linux

// SealedMemfd returns a memfd named name (MemfdCreate) holding b, with
// every seal applied (SealAll): it can be read and mapped, never changed.
// The caller owns the fd. On error nothing is left open.
func SealedMemfd(name string, b []byte) (int, error) {
	fd, err := MemfdCreate(name)
	if err != nil {
		return -1, err
	}
	for off := 0; off < len(b); {
		n, err := Write(fd, b[off:])
		if err != nil {
			Close(fd)
			return -1, err
		}
		off += n
	}
	if err := SealAll(fd); err != nil {
		Close(fd)
		return -1, err
	}
	return fd, nil
}
