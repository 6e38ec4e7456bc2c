// Package journal is a log/slog handler that writes to systemd's journal in
// its native protocol: each record with its priority (Debug 7, Info 6,
// Warn 4, Error 3) as PRIORITY, its message as MESSAGE, and every attribute
// as a field of its own (identity=x.service becomes CAPD_IDENTITY), so
// that "journalctl -p warning" and "journalctl CAPD_IDENTITY=x.service"
// work, without the text handler's second timestamp.
//
// It owns no fds of its own: go-systemd's journal package keeps one
// socket to journald for the process.
package journal

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	sdjournal "github.com/coreos/go-systemd/v22/journal"
)

// Active reports whether the process's stderr is connected to the journal
// (JOURNAL_STREAM names it), so that logging natively loses nothing.
func Active() bool {
	ok, err := sdjournal.StderrIsJournalStream()
	return err == nil && ok && sdjournal.Enabled()
}

// Handler sends records to the journal.
type Handler struct {
	level  slog.Leveler
	fields map[string]string // from WithAttrs, already prefixed
	group  string            // from WithGroup, as a field prefix
	ident  string
}

// NewHandler returns a handler for records at level or above, sent with
// SYSLOG_IDENTIFIER ident.
func NewHandler(ident string, level slog.Leveler) *Handler {
	return &Handler{level: level, fields: map[string]string{}, ident: ident}
}

func (h *Handler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level.Level() }

func (h *Handler) Handle(_ context.Context, r slog.Record) error {
	vars := make(map[string]string, len(h.fields)+r.NumAttrs()+1)
	for k, v := range h.fields {
		vars[k] = v
	}
	vars["SYSLOG_IDENTIFIER"] = h.ident
	r.Attrs(func(a slog.Attr) bool {
		addAttr(vars, h.group, a)
		return true
	})
	return sdjournal.Send(r.Message, priority(r.Level), vars)
}

func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	n := &Handler{level: h.level, fields: make(map[string]string, len(h.fields)+len(as)), group: h.group, ident: h.ident}
	for k, v := range h.fields {
		n.fields[k] = v
	}
	for _, a := range as {
		addAttr(n.fields, h.group, a)
	}
	return n
}

func (h *Handler) WithGroup(name string) slog.Handler {
	n := *h
	n.group = h.group + name + "_"
	return &n
}

func priority(l slog.Level) sdjournal.Priority {
	switch {
	case l >= slog.LevelError:
		return sdjournal.PriErr
	case l >= slog.LevelWarn:
		return sdjournal.PriWarning
	case l >= slog.LevelInfo:
		return sdjournal.PriInfo
	}
	return sdjournal.PriDebug
}

func addAttr(vars map[string]string, group string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		for _, g := range v.Group() {
			addAttr(vars, group+a.Key+"_", g)
		}
		return
	}
	if a.Key == "" {
		return
	}
	vars[FieldName(group+a.Key)] = fmt.Sprint(v.Any())
}

// FieldName turns an attribute key into a journal field name: CAPD_ and
// the key in upper case, every character other than A-Z, 0-9 and _ as _.
func FieldName(key string) string {
	var b strings.Builder
	b.WriteString("CAPD_")
	for _, c := range strings.ToUpper(key) {
		if (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}
