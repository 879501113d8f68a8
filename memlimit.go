package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// memoryLimitShare is the part of its cgroup's memory limit the Go runtime is
// asked to stay within. The rest is for what the runtime does not count:
// socket buffers, which cgroup v2 charges to the container, and thread stacks.
const memoryLimitShare = 0.9

// setMemoryLimit gives the Go runtime a soft memory limit below the memory
// limit of the process's cgroup (a container's resources.limits.memory, a
// systemd unit's MemoryMax). Without one, the collector lets the heap grow to
// twice what is live before it runs, so a process whose live heap passes half
// its limit (an agent holding the buffers of many slow connections) is killed
// for memory it does not use. An explicit GOMEMLIMIT is left as it is.
func setMemoryLimit() error {
	if os.Getenv("GOMEMLIMIT") != "" {
		return nil
	}
	limit, err := cgroupMemoryLimit("/")
	if err != nil || limit == 0 {
		return err
	}
	debug.SetMemoryLimit(int64(float64(limit) * memoryLimitShare))
	return nil
}

// unlimited is where cgroup v1 reports no limit (it prints the largest page
// count it can hold, 9223372036854771712 with 4 KiB pages).
const unlimited = 1 << 62

// cgroupMemoryLimit reads the memory limit in bytes that applies to this
// process, 0 when there is none, from the files under root ("/" but in
// tests): the limit of its own cgroup or of any cgroup above it, in cgroup v1
// (hybrid hosts) or v2.
func cgroupMemoryLimit(root string) (int64, error) {
	mounts, err := cgroupMounts(filepath.Join(root, "proc/self/mountinfo"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil // not Linux: no cgroups
	}
	if err != nil {
		return 0, err
	}
	paths, err := cgroupPaths(filepath.Join(root, "proc/self/cgroup"))
	if err != nil {
		return 0, err
	}
	if m, ok := mounts["memory"]; ok {
		dir := m.dirOf(root, paths["memory"])
		return hierarchicalLimitV1(filepath.Join(dir, "memory.stat"))
	}
	m, ok := mounts[""]
	if !ok {
		return 0, nil
	}
	dir := m.dirOf(root, paths[""])
	top := filepath.Join(root, m.point)
	var limit int64
	for {
		l, err := limitV2(filepath.Join(dir, "memory.max"))
		if err != nil {
			return 0, err
		}
		if l > 0 && (limit == 0 || l < limit) {
			limit = l
		}
		if dir == top || !strings.HasPrefix(dir, top) {
			return limit, nil
		}
		dir = filepath.Dir(dir)
	}
}

// cgroupMount is where a cgroup hierarchy is mounted: root is the cgroup
// shown at point (not "/" when the mount shows a subtree).
type cgroupMount struct{ root, point string }

// dirOf is the directory of cgroup path in the mount, or the mount point
// itself when the cgroup is outside what the mount shows.
func (m cgroupMount) dirOf(root, path string) string {
	rel, err := filepath.Rel(m.root, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		rel = "."
	}
	return filepath.Join(root, m.point, rel)
}

// cgroupMounts reads the cgroup mounts from mountinfo: the v1 hierarchies by
// controller, and the v2 one under "".
func cgroupMounts(mountinfo string) (map[string]cgroupMount, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, fmt.Errorf("reading the mounts: %w", err)
	}
	defer f.Close()
	mounts := map[string]cgroupMount{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root point options [optional...] - fstype source superoptions
		before, after, ok := strings.Cut(sc.Text(), " - ")
		fields, tail := strings.Fields(before), strings.Fields(after)
		if !ok || len(fields) < 5 || len(tail) < 3 {
			continue
		}
		m := cgroupMount{root: fields[3], point: fields[4]}
		switch tail[0] {
		case "cgroup2":
			mounts[""] = m
		case "cgroup":
			for _, opt := range strings.Split(tail[2], ",") {
				mounts[opt] = m
			}
		}
	}
	return mounts, sc.Err()
}

// cgroupPaths reads /proc/self/cgroup: the process's cgroup in each v1
// hierarchy, by controller, and in the v2 one under "".
func cgroupPaths(file string) (map[string]string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the process's cgroups: %w", err)
	}
	paths := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if parts[0] == "0" && parts[1] == "" {
			paths[""] = parts[2]
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			paths[c] = parts[2]
		}
	}
	return paths, nil
}

// hierarchicalLimitV1 reads cgroup v1's limit of a cgroup and those above it.
func hierarchicalLimitV1(stat string) (int64, error) {
	b, err := os.ReadFile(stat)
	if err != nil {
		return 0, fmt.Errorf("reading the memory cgroup: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "hierarchical_memory_limit "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", stat, err)
			}
			if n >= unlimited {
				return 0, nil
			}
			return n, nil
		}
	}
	return 0, nil
}

// limitV2 reads one cgroup's memory.max, 0 for "max" or a cgroup without
// the file (the root, or one whose memory controller is off).
func limitV2(file string) (int64, error) {
	b, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("reading the memory cgroup: %w", err)
	}
	v := strings.TrimSpace(string(b))
	if v == "max" {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	return n, nil
}
