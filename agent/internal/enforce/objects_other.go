//go:build !386 && !amd64

package enforce

import (
	"fmt"
	"runtime"

	"github.com/cilium/ebpf"
)

// The objects are generated for amd64 only (gen.go).

type enforceRevocation struct {
	ExemptCgroupId uint64
	Id             uint64
}

type enforceArgs struct {
	Fd        uint32
	MarkInode uint32
	Rev       enforceRevocation
	Result    int64
}

func loadEnforce() (*ebpf.CollectionSpec, error) {
	return nil, fmt.Errorf("%w: no bpf objects built for %s", ErrUnavailable, runtime.GOARCH)
}
