package enforce

// The BPF objects are generated and committed: building capd needs no
// clang. To regenerate after editing bpf/enforce.c or bpf/kernel.h, on
// Debian 12:
//
//	apt-get install clang-14 llvm-14 libbpf-dev
//	go generate ./agent/internal/enforce
//
// bpf2go writes enforce_x86_bpfel.go and enforce_x86_bpfel.o (amd64 only;
// elsewhere Load returns ErrUnavailable). The object is CO-RE: it
// relocates against the running kernel's BTF (checked on 6.1 and 6.12).

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang-14 -strip llvm-strip-14 -target amd64 -go-package enforce enforce bpf/enforce.c -- -Wall -Werror -I./bpf
