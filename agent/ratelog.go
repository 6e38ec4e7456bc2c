package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Log limits per accounting uid: a burst, then a steady rate. One client
// cannot make the agent write more than this, however many connections and
// bad requests it sends.
const (
	logBurst = 100
	logRate  = 10 // lines per second
)

// logLimiter is a token bucket for one accounting uid's log lines. Lines
// past it are counted, and the count is logged once logging resumes.
type logLimiter struct {
	mu         sync.Mutex
	tokens     float64
	last       time.Time
	suppressed int
}

func newLogLimiter() *logLimiter { return &logLimiter{tokens: logBurst, last: time.Now()} }

// allow takes a token if there is one, and returns how many lines were
// suppressed since the last one allowed.
func (l *logLimiter) allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill(now)
	if l.tokens < 1 {
		l.suppressed++
		return false, 0
	}
	l.tokens--
	n := l.suppressed
	l.suppressed = 0
	return true, n
}

func (l *logLimiter) refill(now time.Time) {
	if d := now.Sub(l.last); d > 0 {
		l.tokens = min(logBurst, l.tokens+d.Seconds()*logRate)
		l.last = now
	}
}

// idle reports whether the bucket is full and nothing is pending, so that
// forgetting it changes nothing.
func (l *logLimiter) idle(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.refill(now)
	return l.tokens >= logBurst && l.suppressed == 0
}

// limitedHandler passes records to the agent's handler while its limiter
// allows.
type limitedHandler struct {
	slog.Handler
	lim *logLimiter
	uid uint32
}

func (h limitedHandler) Handle(ctx context.Context, r slog.Record) error {
	ok, n := h.lim.allow(r.Time)
	if !ok {
		return nil
	}
	if n > 0 {
		s := slog.NewRecord(r.Time, slog.LevelWarn, "log lines of a client suppressed", 0)
		s.AddAttrs(slog.Int("suppressed", n), slog.Any("acct_uid", h.uid))
		h.Handler.Handle(ctx, s)
	}
	return h.Handler.Handle(ctx, r)
}

func (h limitedHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return limitedHandler{h.Handler.WithAttrs(as), h.lim, h.uid}
}

func (h limitedHandler) WithGroup(name string) slog.Handler {
	return limitedHandler{h.Handler.WithGroup(name), h.lim, h.uid}
}
