package netlab

import (
	"errors"
	"os"
	"testing"
	"time"
)

// NewT makes a lab for a test and removes it when the test ends, pass or fail. When the
// test does not run as root it skips, saying why; any other failure to build the lab fails
// the test.
func NewT(t testing.TB) *Lab {
	t.Helper()
	l, err := New()
	if errors.Is(err, ErrNotRoot) {
		t.Skipf("skipping: %v; run the tests as root (CI does)", err)
	}
	if err != nil {
		t.Fatalf("building the network lab: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("removing the network lab: %v", err)
		}
	})
	return l
}

// MustAddHost adds a host to a lab or fails the test.
func MustAddHost(t testing.TB, l *Lab, name string, cidrs ...string) *Host {
	t.Helper()
	h, err := l.AddHost(name, cidrs...)
	if err != nil {
		t.Fatalf("adding lab host %s: %v", name, err)
	}
	return h
}

// Eventually retries check every 20 ms until it returns nil, and fails the
// test with check's last error when timeout passes.
func Eventually(t testing.TB, what string, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// OpenFiles counts the test process's open file descriptors, for tests that check that
// nothing leaks.
func OpenFiles(t testing.TB) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}
