package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestImageBuildContextBuilds builds lbpair as the Dockerfile's build stage does, from
// only what its COPY lines put in the build context, and checks that the result runs
// without a dynamic loader, as the distroless static base image needs. No docker build
// runs here: a package the image leaves out, or a dependency on cgo, fails here instead
// of in a user's build.
func TestImageBuildContextBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary: skipped with -short")
	}
	dockerfile, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	src, out := t.TempDir(), t.TempDir()
	var runs []string
	stages := 0
	sc := bufio.NewScanner(bytes.NewReader(dockerfile))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		switch f[0] {
		case "FROM":
			stages++
		case "COPY":
			if stages != 1 {
				continue
			}
			if len(f) < 3 || strings.HasPrefix(f[1], "--") {
				t.Fatalf("the build stage's %q is not a plain COPY of the context", sc.Text())
			}
			dest := filepath.Join(src, f[len(f)-1])
			for _, from := range f[1 : len(f)-1] {
				info, err := os.Stat(from)
				if err != nil {
					t.Fatalf("%s: %v", sc.Text(), err)
				}
				to := dest
				switch {
				case info.IsDir():
					from += "/." // a directory's contents, as COPY copies them
				case strings.HasSuffix(f[len(f)-1], "/"):
					to = filepath.Join(dest, filepath.Base(from))
				}
				if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
					t.Fatal(err)
				}
				if out, err := exec.Command("cp", "-r", from, to).CombinedOutput(); err != nil {
					t.Fatalf("%s: %v: %s", sc.Text(), err, out)
				}
			}
		case "RUN":
			if stages == 1 {
				runs = append(runs, strings.TrimSpace(strings.TrimPrefix(sc.Text(), "RUN")))
			}
		}
	}
	if len(runs) == 0 {
		t.Fatal("the Dockerfile's build stage runs nothing")
	}
	for _, run := range runs {
		cmd := exec.Command("sh", "-c", strings.ReplaceAll(run, "/out/", out+"/"))
		cmd.Dir = src
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("RUN %s: %v\n%s", run, err, b)
		}
	}
	bin := filepath.Join(out, "lbpair")
	exe, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer exe.Close()
	for _, p := range exe.Progs {
		if p.Type == elf.PT_INTERP {
			t.Error("the image's binary needs a dynamic loader, which the distroless static image lacks")
		}
	}
	b, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(b), "lbpair manager") {
		t.Errorf("the image's binary, run with --help: %v\n%s", err, b)
	}
}
