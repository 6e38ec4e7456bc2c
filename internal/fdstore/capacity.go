package fdstore

import (
	"context"
	"fmt"
	"os"
	"strconv"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
)

// Capacity returns how many fds systemd keeps in the calling service's fd
// store (its FileDescriptorStoreMax=): from $FDSTORE where systemd sets it
// (systemd >= 254), else by asking systemd over its private bus socket
// (root only) for the FileDescriptorStoreMax of the unit the calling
// process belongs to. systemd closes fds past it without telling the
// service, so the agent must not acknowledge more.
func Capacity(ctx context.Context) (int, error) {
	if v := os.Getenv("FDSTORE"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("FDSTORE=%q is not a count", v)
		}
		return n, nil
	}
	c, err := sddbus.NewSystemdConnectionContext(ctx)
	if err != nil {
		return 0, fmt.Errorf("ask systemd for FileDescriptorStoreMax: %w", err)
	}
	defer c.Close()
	unit, err := c.GetUnitNameByPID(ctx, uint32(os.Getpid()))
	if err != nil {
		return 0, fmt.Errorf("ask systemd for the agent's unit: %w", err)
	}
	p, err := c.GetServicePropertyContext(ctx, unit, "FileDescriptorStoreMax")
	if err != nil {
		return 0, fmt.Errorf("ask systemd for %s's FileDescriptorStoreMax: %w", unit, err)
	}
	n, ok := p.Value.Value().(uint32)
	if !ok {
		return 0, fmt.Errorf("%s's FileDescriptorStoreMax is a %s, not a uint32", unit, p.Value.Signature())
	}
	return int(n), nil
}
