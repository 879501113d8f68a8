// Command proxybench compares the lbpair proxy with nginx stream and HAProxy in a
// network-namespace lab (hack/bench.sh runs it). It is also the lab's helpers:
//
//	proxybench run [flags]          the benchmark (as root)
//	proxybench proxy [flags]        the lbpair proxy on its own, as the benchmark runs it
//	proxybench hold -addr A -n N    N idle HTTP keep-alive connections, for memory figures
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		printUsage()
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = runBench(os.Args[2:])
	case "proxy":
		err = runProxy(os.Args[2:])
	case "hold":
		err = runHold(os.Args[2:])
	default:
		printUsage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "proxybench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func printUsage() {
	fmt.Fprintln(os.Stderr, "usage: proxybench run|proxy|hold [flags]; -h after the subcommand lists its flags")
	os.Exit(2)
}
