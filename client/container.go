package client

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/proto"
)

// Registration describes a container to the agent (what the OCI hook
// sends at createRuntime).
type Registration struct {
	ID   string
	Name string // optional; required with Pod
	// Pod is "NAMESPACE/POD" for a Kubernetes pod's container, which is
	// then "pod:NAMESPACE/POD/NAME" (and "pod:NAMESPACE/POD").
	Pod string
	// Refs are the entries the container asks for; the agent says for
	// each whether the container may acquire it now.
	Refs []Ref
	// Required refuses the registration if any of Refs is refused.
	Required bool
	// Running says the container already runs (registered again after a
	// restart): its cgroup may hold more processes than its init. It
	// needs Cgroup.
	Running bool
	// Cgroup is, if not empty, the cgroup v2 path the runtime reports for
	// the container: the agent refuses the registration unless the init's
	// cgroup, as the kernel tells it, is that one.
	Cgroup string
}

// Ref names an entry: its owner's identity and its name.
type Ref struct{ Owner, Name string }

// String is the entry's "OWNER:NAME" form.
func (r Ref) String() string { return r.Owner + ":" + r.Name }

// RefResult is the agent's answer for one requested entry: Err is nil, or
// wraps ErrPermissionDenied or ErrNotFound.
type RefResult struct {
	Ref Ref
	Err error
}

// Register registers a container whose init process is behind pidfd (a
// pidfd the caller keeps; the agent gets a copy). Only root outside
// containers may. It returns the identity the container's processes will
// have and the result for each requested entry.
func (c *Client) Register(r *Registration, pidfd int) (string, []RefResult, error) {
	var flags uint32
	if r.Running {
		flags |= proto.FlagRunning
	}
	return c.register(r, flags, pidfd)
}

// Check asks, before the container has a process, whether the container r
// describes could acquire each of r.Refs; it registers nothing. With
// r.Required a refusal is an error (wrapping ErrPermissionDenied) that
// names every entry refused.
func (c *Client) CheckRegistration(r *Registration) (string, []RefResult, error) {
	return c.register(r, proto.FlagCheck, -1)
}

func (c *Client) register(r *Registration, flags uint32, pidfd int) (string, []RefResult, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpRegister, proto.CodeOK)
	m.String(proto.AttrContainerID, r.ID)
	if r.Name != "" {
		m.String(proto.AttrContainerName, r.Name)
	}
	if r.Pod != "" {
		m.String(proto.AttrPod, r.Pod)
	}
	if r.Cgroup != "" {
		m.String(proto.AttrCgroup, r.Cgroup)
	}
	if r.Required {
		flags |= proto.FlagRequired
	}
	if flags != 0 {
		m.U32(proto.AttrFlags, flags)
	}
	for _, ref := range r.Refs {
		m.String(proto.AttrRef, ref.String())
	}
	c.out = m.Bytes()
	if len(c.out) > proto.MaxRequest {
		return "", nil, fmt.Errorf("register %s: request of %d bytes exceeds %d", r.ID, len(c.out), proto.MaxRequest)
	}
	attrs, _, err := c.roundTrip(proto.OpRegister, pidfd)
	if err != nil {
		return "", nil, fmt.Errorf("register container %s: %w", r.ID, err)
	}
	var identity string
	var results []RefResult
	it := proto.Attrs(attrs)
	for t, v, ok := it.Next(); ok; t, v, ok = it.Next() {
		switch t {
		case proto.AttrIdentity:
			identity = string(v)
		case proto.AttrResult:
			res, err := decodeResult(v)
			if err != nil {
				return "", nil, fmt.Errorf("register container %s: %w", r.ID, err)
			}
			results = append(results, res)
		}
	}
	if err := it.Err(); err != nil {
		return "", nil, fmt.Errorf("register container %s: %w", r.ID, err)
	}
	return identity, results, nil
}

func decodeResult(b []byte) (RefResult, error) {
	var owner, name, msg string
	var code uint32
	var err error
	it := proto.Attrs(b)
	for t, v, ok := it.Next(); ok && err == nil; t, v, ok = it.Next() {
		switch t {
		case proto.AttrOwner:
			owner = string(v)
		case proto.AttrName:
			name = string(v)
		case proto.AttrCode:
			code, err = proto.U32(v)
		case proto.AttrMessage:
			msg = string(v)
		}
	}
	if err == nil {
		err = it.Err()
	}
	res := RefResult{Ref: Ref{owner, name}}
	if code != 0 {
		res.Err = &proto.Error{Code: proto.Code(code), Message: msg}
	}
	return res, err
}

// Unregister forgets a container (the OCI hook's poststop); the agent drops
// its unpinned entries.
func (c *Client) Unregister(id string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpUnregister, proto.CodeOK)
	m.String(proto.AttrContainerID, id)
	c.out = m.Bytes()
	if _, _, err := c.roundTrip(proto.OpUnregister, -1); err != nil {
		return fmt.Errorf("unregister container %s: %w", id, err)
	}
	return nil
}

// AuditReport is what Audit returns (see docs/PROTOCOL.md, AUDIT).
type AuditReport = proto.AuditReport

// AuditEntryReport and AuditHolderReport are the parts of an AuditReport.
type (
	AuditEntryReport  = proto.AuditEntry
	AuditHolderReport = proto.AuditHolder
)

// Audit asks the agent (root only) which processes hold copies of its
// entries, and of recently removed ones, and how exposed they are.
func (c *Client) Audit() (*AuditReport, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := proto.NewMessage(c.out, proto.OpAudit, proto.CodeOK)
	c.out = m.Bytes()
	_, fd, err := c.roundTrip(proto.OpAudit, -1)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	f := os.NewFile(uintptr(fd), "capd-audit")
	defer f.Close()
	var rep AuditReport
	if err := json.NewDecoder(io.NewSectionReader(f, 0, 1<<40)).Decode(&rep); err != nil {
		return nil, fmt.Errorf("audit: report: %w", err)
	}
	return &rep, nil
}

// WaitClosed blocks until the agent closes this connection (its idle
// timeout, or the agent stopping); it sends nothing. A caller that must
// notice an agent restart (an NRI plugin, which registers its containers
// again) keeps a Client of its own waiting here; a request on the Client
// afterwards connects again.
func (c *Client) WaitClosed() error {
	c.mu.Lock()
	fd := c.fd
	c.mu.Unlock()
	if fd < 0 {
		return ErrClosed
	}
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
	if _, err := linux.Poll(fds, -1); err != nil {
		return err
	}
	c.mu.Lock()
	c.broken = true
	c.mu.Unlock()
	return nil
}
