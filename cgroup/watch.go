package cgroup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/capd-dev/capd/internal/linux"
	"github.com/capd-dev/capd/internal/poller"
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

// Procs lists the processes in the cgroup v2 directory dir and every
// cgroup below it.
func Procs(dir string) ([]int, error) {
	var pids []int
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		return nil
	})
	return pids, err
}

// Watcher tells when watched cgroups have no processes left. The kernel
// signals every change of cgroup.events through inotify (IN_MODIFY; at most
// one notification per cgroup every 20 ms, the later ones delayed, not
// lost). That is not enough alone: a notification still delayed when the
// cgroup is removed is dropped, and removal does not signal cgroup.events
// watchers (kernfs keeps the watched inode). So the watcher also watches
// each watched cgroup's parent directory for IN_DELETE: rmdir(2) reports
// the removed child there, and a removed cgroup was empty. Add re-checks
// which inode it watches, as a cgroup created again at the same path is a
// new one. One inotify fd and one
// goroutine serve every watched cgroup: there is no timer or goroutine per
// cgroup and no polling.
//
// Each watched path has an epoch, taken from one counter for the whole
// watcher, that grows every time the cgroup is seen empty (or removed); a
// watch created anew starts at the counter's current value, so a report
// still in flight for an earlier watch of the same path can never concern
// holders of the new one. Add returns the current epoch together with the
// populated state it read under the same lock as the watcher's own reads,
// so a caller that records the epoch can tell whether an emptying reported
// later happened before or after its Add: OnEmpty(path, epoch) concerns
// exactly the holders that recorded an epoch below epoch.
//
// The watcher also keeps what it last read of each watched cgroup's
// populated key, so that a cgroup it watches already costs a new holder
// no system call (Hold).
type Watcher struct {
	mount   string
	onEmpty func(path string, epoch uint64)
	fd      int // inotify
	poll    *poller.Poller
	done    chan struct{}

	mu      sync.Mutex
	epoch   uint64 // the last epoch handed out, for every path
	paths   map[string]*watch
	wds     map[int32]*watch // cgroup.events watches
	parents map[string]*parent
	pwds    map[int32]*parent // parent directory watches
}

type watch struct {
	path      string
	wd        int32  // -1 while there is no inotify watch (never added, or cgroup removed)
	ino       uint64 // inode (the cgroup id) of the cgroup directory the watch is on; 0 if unknown
	refs      int
	epoch     uint64
	populated bool // what the watcher last read of populated (false after an emptying, a removal or a failed read)
}

// parent is the watch on the directory holding watched cgroups, for the
// IN_DELETE that rmdir of one of them makes.
type parent struct {
	path     string
	wd       int32
	children map[string]*watch // by directory name
}

// NewWatcher starts a watcher on the v2 hierarchy at mount. onEmpty runs on
// the watcher's goroutine, without the watcher's lock held; it may call Add
// and Remove.
func NewWatcher(mount string, onEmpty func(path string, epoch uint64)) (*Watcher, error) {
	fd, err := linux.InotifyInit1(unix.IN_NONBLOCK)
	if err != nil {
		return nil, err
	}
	poll, err := poller.New()
	if err != nil {
		linux.Close(fd)
		return nil, err
	}
	w := &Watcher{
		mount:   mount,
		onEmpty: onEmpty,
		fd:      fd,
		poll:    poll,
		done:    make(chan struct{}),
		paths:   make(map[string]*watch),
		wds:     make(map[int32]*watch),
		parents: make(map[string]*parent),
		pwds:    make(map[int32]*parent),
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
// now. A cgroup that does not exist reads as not populated. If the watch
// was on a cgroup that has since been removed and created again at p,
// that earlier cgroup counts as emptied: the epoch returned is a new one,
// and recreated says that holders with an older epoch belong to the old
// cgroup (no report is sent for it). Each Add must be balanced by one
// Remove, whatever it returned, unless it failed.
func (w *Watcher) Add(p string) (epoch uint64, populated, recreated bool, err error) {
	if !Watchable(p) {
		return 0, false, false, fmt.Errorf("cgroup %s cannot be watched", p)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	wt := w.paths[p]
	if wt == nil {
		wt = &watch{path: p, wd: -1, epoch: w.epoch}
		if err := w.addParentLocked(wt); err != nil {
			return 0, false, false, err
		}
	}
	dir := w.dir(p)
	// Add the watch every time: on the same inode the kernel returns the
	// same wd; a new wd means the cgroup at p was removed and created
	// again since (a restarted service), and the old watch is stale.
	wd, err := linux.InotifyAddWatch(w.fd, dir+"/cgroup.events", unix.IN_MODIFY)
	switch {
	case errors.Is(err, unix.ENOENT):
		// Removed: not populated, and nothing to watch.
	case err != nil:
		if wt.refs == 0 {
			w.dropLocked(wt)
		}
		return 0, false, false, fmt.Errorf("watch cgroup %s: %w", p, err)
	case int32(wd) != wt.wd:
		if wt.wd >= 0 {
			delete(w.wds, wt.wd)
			linux.InotifyRmWatch(w.fd, uint32(wt.wd))
			if wt.refs > 0 {
				w.epoch++
				wt.epoch = w.epoch
				recreated = true
			}
		}
		wt.wd = int32(wd)
		w.wds[wt.wd] = wt
		var st unix.Stat_t
		wt.ino = 0
		if linux.Stat(dir, &st) == nil {
			wt.ino = st.Ino
		}
	}
	populated, err = Populated(dir)
	wt.populated = err == nil && populated
	if err != nil {
		if wt.refs == 0 {
			w.dropLocked(wt)
		}
		return 0, false, false, err
	}
	wt.refs++
	w.paths[p] = wt
	return wt.epoch, populated, recreated, nil
}

// Hold takes a reference on the watch of cgroup path p without a system
// call, if there is one on the cgroup whose id is id (its directory's
// inode: the id PIDFD_GET_INFO reports) and the watcher last read that
// cgroup populated; it returns the watch's epoch. Otherwise it takes
// nothing and returns false: the caller Adds, which reads cgroup.events
// and finds out whether the cgroup at p was created again. A Hold that
// succeeded is balanced by one Remove, as an Add is.
//
// What Hold knows is what the kernel last reported: an emptying whose
// notification is still on its way (the kernel delays one by up to 20 ms
// after the previous one) is reported with a new epoch, which concerns
// the holder Hold gave the old one.
func (w *Watcher) Hold(p string, id uint64) (epoch uint64, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	wt := w.paths[p]
	if wt == nil || wt.wd < 0 || id == 0 || wt.ino != id || !wt.populated {
		return 0, false
	}
	wt.refs++
	return wt.epoch, true
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
	w.unwatchLocked(wt)
	delete(w.paths, wt.path)
	dir, name := path.Split(wt.path)
	pp := path.Clean(dir)
	if pa := w.parents[pp]; pa != nil && pa.children[name] == wt {
		delete(pa.children, name)
		if len(pa.children) == 0 {
			delete(w.pwds, pa.wd)
			linux.InotifyRmWatch(w.fd, uint32(pa.wd))
			delete(w.parents, pp)
		}
	}
}

// unwatchLocked removes wt's cgroup.events watch. Its IN_IGNORED then
// finds no watch and is skipped.
func (w *Watcher) unwatchLocked(wt *watch) {
	if wt.wd >= 0 {
		delete(w.wds, wt.wd)
		linux.InotifyRmWatch(w.fd, uint32(wt.wd))
		wt.wd = -1
	}
}

// addParentLocked registers new watch wt with its parent directory's watch.
func (w *Watcher) addParentLocked(wt *watch) error {
	dir, name := path.Split(wt.path)
	pp := path.Clean(dir)
	pa := w.parents[pp]
	if pa == nil {
		wd, err := linux.InotifyAddWatch(w.fd, w.dir(pp), unix.IN_DELETE|unix.IN_ONLYDIR)
		if err != nil {
			return fmt.Errorf("watch cgroup %s: %w", pp, err)
		}
		pa = &parent{path: pp, wd: int32(wd), children: make(map[string]*watch)}
		w.parents[pp] = pa
		w.pwds[pa.wd] = pa
	}
	pa.children[name] = wt
	return nil
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
	w.poll.Stop()
	<-w.done
	w.poll.Close()
	return linux.Close(w.fd)
}

type fired struct {
	path  string
	epoch uint64
}

func (w *Watcher) run() {
	defer close(w.done)
	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	var out []fired
	for {
		if err := w.poll.Wait(w.fd); err != nil {
			return // stopped (or an inotify fd that failed: nothing more to read)
		}
		n, err := linux.Read(w.fd, buf)
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
		w.epoch++
		wt.epoch, wt.populated = w.epoch, false
		out = append(out, fired{wt.path, wt.epoch})
	}
	// read re-reads wt's populated key and reports whether it read that
	// the cgroup is empty.
	read := func(wt *watch) bool {
		pop, err := Populated(w.dir(wt.path))
		wt.populated = err == nil && pop
		return err == nil && !pop
	}
	for len(b) >= unix.SizeofInotifyEvent {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&b[0]))
		size := unix.SizeofInotifyEvent + int(ev.Len)
		if size > len(b) {
			break
		}
		name := string(bytes.TrimRight(b[unix.SizeofInotifyEvent:size], "\x00"))
		b = b[size:]
		if ev.Mask&unix.IN_Q_OVERFLOW != 0 {
			// Events were lost: look at every watched cgroup.
			for _, wt := range w.paths {
				if read(wt) {
					emptied(wt)
				}
			}
			continue
		}
		if pa := w.pwds[ev.Wd]; pa != nil {
			// rmdir of a child: if it is watched, it was empty. A cgroup
			// at that path now, with the inode the watch is on, was
			// created again and Add already moved the watch to it: the
			// event is about the old one, which Add accounted for.
			if wt := pa.children[name]; wt != nil && ev.Mask&unix.IN_DELETE != 0 {
				var st unix.Stat_t
				if linux.Stat(w.dir(wt.path), &st) == nil && st.Ino == wt.ino && wt.wd >= 0 {
					continue
				}
				w.unwatchLocked(wt)
				emptied(wt)
			}
			continue
		}
		wt := w.wds[ev.Wd]
		if wt == nil {
			continue
		}
		switch {
		case ev.Mask&unix.IN_IGNORED != 0:
			// The watched inode is gone. A cgroup created later at the
			// same path is another cgroup: the next Add watches it.
			delete(w.wds, wt.wd)
			wt.wd = -1
			emptied(wt)
		case ev.Mask&unix.IN_MODIFY != 0:
			if read(wt) {
				emptied(wt)
			}
		}
	}
	return out
}
