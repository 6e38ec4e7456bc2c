package store

import "time"

// Clock is the time the store expires entries by.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f on its own goroutine once d has passed, like
	// time.AfterFunc.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a timer Clock.AfterFunc made (*time.Timer is one).
type Timer interface {
	Reset(d time.Duration) bool
	Stop() bool
}

// realClock is the system's clock.
type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) Timer {
	return time.AfterFunc(d, f)
}
