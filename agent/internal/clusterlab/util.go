package clusterlab

import (
	"bytes"
	"io"
	"sync"
)

// lineWriter calls logf once per line written.
type lineWriter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	logf func(string)
}

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			return len(p), nil
		}
		w.logf(line[:len(line)-1])
	}
}

func io2(a, b io.Writer) io.Writer { return io.MultiWriter(a, b) }
