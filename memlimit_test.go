package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// printMemoryLimitEnv makes TestMain print the Go memory limit once main
// returns.
const printMemoryLimitEnv = "LBPAIR_TEST_PRINT_MEMORY_LIMIT"

// TestMemoryLimitFollowsTheCgroup starts lbpair in a memory cgroup of its
// own with a 256 MiB limit, as a container with that limit, and checks the
// Go runtime's limit main sets: 90% of it, or GOMEMLIMIT when that is set.
func TestMemoryLimitFollowsTheCgroup(t *testing.T) {
	const limit = 256 << 20
	dir := memoryCgroup(t, limit)
	for _, tc := range []struct {
		name, gomemlimit string
		want             int64
	}{
		{"from the cgroup", "", limit * 9 / 10},
		{"GOMEMLIMIT kept", "100MiB", 100 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The shell joins the cgroup, then becomes lbpair: the limit is
			// there from its first instruction, as in a container.
			cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$1" -test.run='^$'`, dir, os.Args[0])
			cmd.Env = append(os.Environ(), mainArgsEnv+"=agent\n-h", printMemoryLimitEnv+"=1", "GOMEMLIMIT="+tc.gomemlimit)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("lbpair agent -h in the cgroup: %v\n%s", err, out)
			}
			m := regexp.MustCompile(`(?m)^memory limit (\d+)$`).FindSubmatch(out)
			if m == nil {
				t.Fatalf("no memory limit printed:\n%s", out)
			}
			got, _ := strconv.ParseInt(string(m[1]), 10, 64)
			// The runtime rounds nothing, but 0.9 as a float may lose a byte.
			if d := got - tc.want; d < -1 || d > 1 {
				t.Errorf("memory limit %d, want %d", got, tc.want)
			}
		})
	}
}

// memoryCgroup makes a memory cgroup with the given limit, removed at the end
// of the test: under the test's own cgroup in a cgroup v1 memory hierarchy,
// or under the root of a cgroup v2 one whose memory controller is on for its
// children.
func memoryCgroup(t *testing.T, limit int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("not root: cannot make a memory cgroup")
	}
	mounts, err := cgroupMounts("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	paths, err := cgroupPaths("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("lbpair-test-%d", os.Getpid())
	var dir, limitFile string
	if m, ok := mounts["memory"]; ok {
		dir, limitFile = filepath.Join(m.dirOf("/", paths["memory"]), name), "memory.limit_in_bytes"
	} else if m, ok := mounts[""]; ok {
		control, err := os.ReadFile(filepath.Join(m.point, "cgroup.subtree_control"))
		if err != nil || !strings.Contains(" "+strings.TrimSpace(string(control))+" ", " memory ") {
			t.Skipf("the cgroup v2 root at %s does not give its children the memory controller (%q, %v)", m.point, control, err)
		}
		dir, limitFile = filepath.Join(m.point, name), "memory.max"
	} else {
		t.Skip("no cgroup hierarchy with the memory controller is mounted")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Skipf("cannot make a memory cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing the test's cgroup: %v", err)
		}
	})
	if err := os.WriteFile(filepath.Join(dir, limitFile), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestCgroupMemoryLimit reads the limit from the cgroup files of several
// kinds of host, laid out under a temporary root.
func TestCgroupMemoryLimit(t *testing.T) {
	const (
		v2only   = "30 24 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
		hybrid   = "31 24 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n32 24 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
		v1Stat   = "cache 0\nhierarchical_memory_limit %d\nhierarchical_memsw_limit 9223372036854771712\n"
		v1NoStat = "cache 0\n"
	)
	for _, tc := range []struct {
		name      string
		mountinfo string
		cgroup    string
		files     map[string]string
		want      int64
	}{
		{
			name:      "v2 container with its own cgroup namespace",
			mountinfo: v2only, cgroup: "0::/\n",
			files: map[string]string{"sys/fs/cgroup/memory.max": "536870912\n"},
			want:  512 << 20,
		},
		{
			name:      "v2 without a cgroup namespace: the pod's limit is lower than the container's",
			mountinfo: v2only, cgroup: "0::/kubepods.slice/pod1.slice/cri-abc.scope\n",
			files: map[string]string{
				"sys/fs/cgroup/kubepods.slice/pod1.slice/cri-abc.scope/memory.max": "536870912\n",
				"sys/fs/cgroup/kubepods.slice/pod1.slice/memory.max":               "268435456\n",
				"sys/fs/cgroup/kubepods.slice/memory.max":                          "max\n",
			},
			want: 256 << 20,
		},
		{
			name:      "v2 systemd unit without MemoryMax",
			mountinfo: v2only, cgroup: "0::/system.slice/lbpair-agent.service\n",
			files: map[string]string{"sys/fs/cgroup/system.slice/lbpair-agent.service/memory.max": "max\n"},
			want:  0,
		},
		{
			name:      "v2 mount showing a subtree",
			mountinfo: "30 24 0:26 /kubepods/pod1/ctr /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
			cgroup:    "0::/kubepods/pod1/ctr\n",
			files:     map[string]string{"sys/fs/cgroup/memory.max": "104857600\n"},
			want:      100 << 20,
		},
		{
			name:      "v1 memory hierarchy on a hybrid host",
			mountinfo: hybrid, cgroup: "4:memory:/process_api/abc\n0::/\n",
			files: map[string]string{
				"sys/fs/cgroup/memory/process_api/abc/memory.stat": fmt.Sprintf(v1Stat, 128<<20),
				"sys/fs/cgroup/unified/memory.max":                 "64\n", // not the hierarchy with memory
			},
			want: 128 << 20,
		},
		{
			name:      "v1 without a limit",
			mountinfo: hybrid, cgroup: "4:memory:/\n0::/\n",
			files: map[string]string{"sys/fs/cgroup/memory/memory.stat": fmt.Sprintf(v1Stat, int64(9223372036854771712))},
			want:  0,
		},
		{
			name:      "v1 without the hierarchical figure",
			mountinfo: hybrid, cgroup: "4:memory:/\n0::/\n",
			files: map[string]string{"sys/fs/cgroup/memory/memory.stat": v1NoStat},
			want:  0,
		},
		{
			name: "no /proc (not Linux)",
			want: 0,
		},
		{
			name:      "no cgroup mounted",
			mountinfo: "22 1 0:21 / /proc rw - proc proc rw\n", cgroup: "0::/\n",
			want: 0,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			files := map[string]string{}
			if tc.mountinfo != "" {
				files["proc/self/mountinfo"], files["proc/self/cgroup"] = tc.mountinfo, tc.cgroup
			}
			for k, v := range tc.files {
				files[k] = v
			}
			for name, content := range files {
				path := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := cgroupMemoryLimit(root)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("limit %d, want %d", got, tc.want)
			}
		})
	}
}
