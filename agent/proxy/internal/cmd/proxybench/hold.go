package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runHold opens n connections to addr, makes one HTTP request on each (so every proxy has
// done its per-connection setup and first transfer), prints "ready", and keeps them open
// and idle until it is signalled. With -stalled, each requests the bulk file and reads
// none of it, as clients that stopped reading a download.
func runHold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	addr := fs.String("addr", "", "address to connect to")
	n := fs.Int("n", 1000, "connections")
	stalled := fs.Bool("stalled", false, "request the bulk file on each connection and read none of it")
	_ = fs.Parse(args)
	path := "/"
	if *stalled {
		path = "/big"
	}
	raiseNoFile()
	conns := make([]net.Conn, 0, *n)
	for i := range *n {
		c, err := net.DialTimeout("tcp", *addr, 5*time.Second)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
	}
	for i, c := range conns {
		if *stalled {
			break
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if err := readResponse(bufio.NewReader(c)); err != nil {
			return fmt.Errorf("connection %d: reading the response: %w", i, err)
		}
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	for _, c := range conns {
		_ = c.Close()
	}
	return nil
}

// readResponse reads one HTTP response with a Content-Length body.
func readResponse(r *bufio.Reader) error {
	length := -1
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		line = strings.TrimRight(line, "\r\n")
		if line == "" {
			break
		}
		if k, v, ok := strings.Cut(line, ":"); ok && strings.EqualFold(k, "content-length") {
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	if length < 0 {
		return fmt.Errorf("no Content-Length")
	}
	_, err := io.CopyN(io.Discard, r, int64(length))
	return err
}
