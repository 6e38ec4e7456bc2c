package metrics

import (
	"net"
	"testing"
	"time"
)

// A listener answers up to maxConcurrent connections at once, as many as
// its backlog: a client (any local user, on a loopback listen) that keeps
// that many connections open and silent delays a scrape by about one
// Timeout, not by one Timeout per connection, as answering one at a time
// did (16 x 2 s by default, past Prometheus's 10 s scrape timeout).
func TestSilentClientsDelayScrapesOnce(t *testing.T) {
	const timeout = 250 * time.Millisecond
	e, _ := start(t, Options{Timeout: timeout})
	sock := e.Addrs()[0]
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for i := 0; i < backlog; i++ {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("G")) // not blank: answered 408 at the deadline, after the wait
		idle = append(idle, c)
	}
	time.Sleep(20 * time.Millisecond)
	begin := time.Now()
	if status, _, _ := response(t, exchange(t, sock, 0, "GET /metrics HTTP/1.1\r\n\r\n")); status != 200 {
		t.Errorf("scrape: %d", status)
	}
	if took := time.Since(begin); took > 2*timeout+lingerTime {
		t.Errorf("a scrape behind %d silent connections took %v (Timeout %v)", backlog, took, timeout)
	}
}
