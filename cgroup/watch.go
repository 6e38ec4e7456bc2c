package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
)

// Populated reports whether the cgroup v2 directory dir, or any cgroup
// below it, has processes: the "populated" key of its cgroup.events. A
// cgroup that no longer exists is not populated. (containerd/cgroups reads
// the same key, but only behind unexported methods.)
func Populated(dir string) (bool, error) {
	b, err := os.ReadFile(dir + "/cgroup.events")
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for len(b) > 0 {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte{'\n'})
		if v, ok := bytes.CutPrefix(line, []byte("populated ")); ok {
			return string(v) != "0", nil
		}
	}
	return false, fmt.Errorf("%s/cgroup.events has no populated key", dir)
}

// Watcher tells when watched cgroups have no processes left. The kernel
// signals every change of cgroup.events through inotify (IN_MODIFY; at most
// one notification per cgroup every 20 ms, the later ones delayed, not
// lost), and IN_IGNORED when the cgroup is removed. One inotify fd and one
// goroutine serve every watched cgroup: there is no timer or goroutine per
// cgroup and no polling.
//
// Each watched path has an epoch that grows every time the cgroup is seen
// empty (or removed). Add returns the current epoch together with the
// populated state it read under the same lock as the watcher's own reads,
// so a caller that records the epoch can tell whether an emptying reported
// later happened before or after its Add: OnEmpty(path, epoch) concerns
// exactly the holders that recorded an epoch below epoch.
type Watcher struct {
	mount   string
	onEmpty func(path string, epoch uint64)
	fd      int // inotify
	wake    int // eventfd that stops run
	done    chan struct{}

	mu    sync.Mutex
	paths map[string]*watch
	wds   map[int32]*watch
}

type watch struct {
	path  string
	wd    int32 // -1 while there is no inotify watch (never added, or cgroup removed)
	refs  int
	epoch uint64
}

// NewWatcher starts a watcher on the v2 hierarchy at mount. onEmpty runs on
// the watcher's goroutine, without the watcher's lock held; it may call Add
// and Remove.
func NewWatcher(mount string, onEmpty func(path string, epoch uint64)) (*Watcher, error) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, os.NewSyscallError("inotify_init1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		linux.Close(fd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	w := &Watcher{
		mount:   mount,
		onEmpty: onEmpty,
		fd:      fd,
		wake:    wake,
		done:    make(chan struct{}),
		paths:   make(map[string]*watch),
		wds:     make(map[int32]*watch),
	}
	go w.run()
	return w, nil
}

func (w *Watcher) dir(p string) string {
	if p == "/" {
		return w.mount
	}
	return w.mount + p
}

// Watchable reports whether cgroup path p can ever be empty: every cgroup
// but the root.
func Watchable(p string) bool { return p != "/" }

// Add takes a reference on the watch of cgroup path p, creating it on first
// use, and returns the path's epoch and whether the cgroup has processes
// now. A cgroup that does not exist reads as not populated. Each Add must
// be balanced by one Remove, whatever it returned, unless it failed.
func (w *Watcher) Add(p string) (epoch uint64, populated bool, err error) {
	if !Watchable(p) {
		return 0, false, fmt.Errorf("cgroup %s cannot be watched", p)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	wt := w.paths[p]
	if wt == nil {
		wt = &watch{path: p, wd: -1}
	}
	dir := w.dir(p)
	if wt.wd < 0 {
		wd, err := unix.InotifyAddWatch(w.fd, dir+"/cgroup.events", unix.IN_MODIFY)
		switch {
		case errors.Is(err, unix.ENOENT):
			// Removed: not populated, and nothing to watch.
		case err != nil:
			if wt.refs == 0 {
				delete(w.paths, p)
			}
			return 0, false, fmt.Errorf("watch cgroup %s: %w", p, os.NewSyscallError("inotify_add_watch", err))
		default:
			wt.wd = int32(wd)
			w.wds[wt.wd] = wt
		}
	}
	populated, err = Populated(dir)
	if err != nil {
		if wt.refs == 0 {
			w.dropLocked(wt)
		}
		return 0, false, err
	}
	wt.refs++
	w.paths[p] = wt
	return wt.epoch, populated, nil
}

// Remove drops one reference on p's watch; the last one removes it.
func (w *Watcher) Remove(p string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	wt := w.paths[p]
	if wt == nil {
		return
	}
	if wt.refs--; wt.refs <= 0 {
		w.dropLocked(wt)
	}
}

func (w *Watcher) dropLocked(wt *watch) {
	if wt.wd >= 0 {
		delete(w.wds, wt.wd)
		unix.InotifyRmWatch(w.fd, uint32(wt.wd)) // its IN_IGNORED finds no watch and is skipped
	}
	delete(w.paths, wt.path)
}

// Len returns the number of watched cgroups.
func (w *Watcher) Len() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.paths)
}

// Close stops the watcher and releases its fds. onEmpty is not called
// after Close returns.
func (w *Watcher) Close() error {
	var one [8]byte
	one[0] = 1
	unix.Write(w.wake, one[:])
	<-w.done
	linux.Close(w.wake)
	return linux.Close(w.fd)
}

type fired struct {
	path  string
	epoch uint64
}

func (w *Watcher) run() {
	defer close(w.done)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLIN}, {Fd: int32(w.wake), Events: unix.POLLIN}}
	var out []fired
	for {
		fds[0].Revents, fds[1].Revents = 0, 0
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			return
		}
		if fds[1].Revents != 0 {
			return
		}
		n, err := unix.Read(w.fd, buf)
		if err != nil || n <= 0 {
			continue // EAGAIN: another reader (none) or spurious wakeup
		}
		out = w.handle(buf[:n], out[:0])
		for _, f := range out {
			w.onEmpty(f.path, f.epoch)
		}
	}
}

// handle processes a buffer of inotify events and appends the cgroups found
// empty, with their new epochs.
func (w *Watcher) handle(b []byte, out []fired) []fired {
	w.mu.Lock()
	defer w.mu.Unlock()
	emptied := func(wt *watch) {
		wt.epoch++
		out = append(out, fired{wt.path, wt.epoch})
	}
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		size := unix.SizeofInotifyEvent + int(ev.Len)
		if size > len(b) {
			break
		}
		b = b[size:]
		if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
			// Events were lost: look at every watched cgroup.
			for _, wt := range w.wds {
				if pop, err := Populated(w.dir(wt.path)); err == nil && !pop {
					emptied(wt)
				}
			}
			continue
		}
		wt := w.wds[ev.Wd]
		if wt == nil {
			continue
		}
		switch {
		case ev.Mask&unix.IN_IGNORED != 0:
			// The cgroup was removed. A cgroup created later at the same
			// path is another cgroup: the next Add watches it afresh.
			delete(w.wds, wt.wd)
			wt.wd = -1
			emptied(wt)
		case ev.Mask&unix.IN_MODIFY != 0:
			if pop, err := Populated(w.dir(wt.path)); err == nil && !pop {
				emptied(wt)
			}
		}
	}
	return out
}
