package tests

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// The node's two images, built here without any registry as OCI image
// archives (the layout of the OCI image spec, tarred) and imported with
// 'ctr images import'. The same inputs give the same bytes: the files of
// a layer are sorted, owned by 0:0, dated 1970, gzipped without a name or
// time. An archive is cached under the node binaries' cache directory,
// named after a digest of its inputs, so it is built once per inputs.
const (
	k8sPauseImage   = "k8s.local/capd-pause:1.0"   // the sandbox image: /pause
	k8sBusyboxImage = "k8s.local/capd-busybox:1.0" // Debian's static busybox with its applets in /bin
)

// k8sImageFormat changes the cache key when the way images are built
// changes.
const k8sImageFormat = "capd-k8s-image-1"

// pauseC is the pod sandbox's PID 1: it holds the pod's namespaces, reaps
// the zombies it inherits and exits on SIGTERM or SIGINT.
const pauseC = `#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, 0, WNOHANG) > 0)
		;
}

int main(void) {
	struct sigaction q = {.sa_handler = quit};
	struct sigaction r = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
	if (sigaction(SIGTERM, &q, 0) || sigaction(SIGINT, &q, 0) || sigaction(SIGCHLD, &r, 0))
		return 1;
	for (;;)
		pause();
}
`

// layerFile is one entry of an image layer.
type layerFile struct {
	name string // relative, without a leading "/" or "./"
	mode int64
	typ  byte   // tar.TypeReg, TypeDir or TypeSymlink
	link string // symlink target
	data []byte
}

// k8sImageArchives returns the OCI archives of the pause and busybox
// images, building those not in dir (the cache's images directory) yet.
func k8sImageArchives(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	pause, err := cachedImage(dir, k8sPauseImage, []byte(pauseC), buildPause)
	if err != nil {
		return nil, err
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("read Debian's static busybox (apt-get install busybox-static; scripts/install-k8s-deps.sh): %w", err)
	}
	busybox, err := cachedImage(dir, k8sBusyboxImage, bb, busyboxFiles)
	if err != nil {
		return nil, err
	}
	return []string{pause, busybox}, nil
}

// cachedImage returns the archive of ref for input in dir, building it
// with files (which get input) when it is not there. A finished archive
// appears by rename: never half written.
func cachedImage(dir, ref string, input []byte, files func([]byte) ([]layerFile, []string, error)) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", k8sImageFormat, ref, runtime.GOARCH)
	h.Write(input)
	name := strings.NewReplacer("/", "_", ":", "_").Replace(ref)
	path := filepath.Join(dir, fmt.Sprintf("%s-%x.oci.tar", name, h.Sum(nil)[:8]))
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	layer, entrypoint, err := files(input)
	if err != nil {
		return "", fmt.Errorf("build %s: %w", ref, err)
	}
	archive, err := ociArchive(ref, layer, entrypoint)
	if err != nil {
		return "", fmt.Errorf("build %s: %w", ref, err)
	}
	tmp, err := os.CreateTemp(dir, ".build-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", err
	}
	_, err = tmp.Write(archive)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	return path, err
}

// buildPause compiles pauseC into a static stripped /pause.
func buildPause(src []byte) ([]layerFile, []string, error) {
	tmp, err := os.MkdirTemp("", "capd-pause")
	if err != nil {
		return nil, nil, err
	}
	defer os.RemoveAll(tmp)
	if err := os.WriteFile(filepath.Join(tmp, "pause.c"), src, 0o644); err != nil {
		return nil, nil, err
	}
	cmd := exec.Command("gcc", "-static", "-Os", "-s", "-o", "pause", "pause.c")
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("gcc -static pause.c (needs gcc and libc6-dev: scripts/install-k8s-deps.sh): %v\n%s", err, out)
	}
	bin, err := os.ReadFile(filepath.Join(tmp, "pause"))
	if err != nil {
		return nil, nil, err
	}
	return []layerFile{{name: "pause", mode: 0o755, typ: tar.TypeReg, data: bin}}, []string{"/pause"}, nil
}

// busyboxFiles lays out a small root filesystem around the static
// busybox: every applet as a symlink in /bin, root and nobody in
// /etc/passwd, the usual mount points.
func busyboxFiles(bb []byte) ([]layerFile, []string, error) {
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, nil, fmt.Errorf("busybox --list: %w", err)
	}
	files := []layerFile{
		{name: "bin", mode: 0o755, typ: tar.TypeDir},
		{name: "bin/busybox", mode: 0o755, typ: tar.TypeReg, data: bb},
		{name: "etc", mode: 0o755, typ: tar.TypeDir},
		{name: "etc/passwd", mode: 0o644, typ: tar.TypeReg, data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		{name: "etc/group", mode: 0o644, typ: tar.TypeReg, data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{name: "tmp", mode: 0o1777, typ: tar.TypeDir},
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "root", "var"} {
		files = append(files, layerFile{name: d, mode: 0o755, typ: tar.TypeDir})
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" && !strings.Contains(applet, "/") {
			files = append(files, layerFile{name: "bin/" + applet, mode: 0o777, typ: tar.TypeSymlink, link: "busybox"})
		}
	}
	return files, nil, nil
}

// ociArchive returns an OCI image layout with one single-layer image,
// tarred, its index naming it ref for 'ctr images import'.
func ociArchive(ref string, files []layerFile, entrypoint []string) ([]byte, error) {
	slices.SortFunc(files, func(a, b layerFile) int { return strings.Compare(a.name, b.name) })
	tarred, err := tarFiles(files)
	if err != nil {
		return nil, err
	}
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	zw.Write(tarred)
	if err := zw.Close(); err != nil {
		return nil, err
	}

	blobs := map[string][]byte{} // digest -> content
	blob := func(mediaType string, b []byte) ociDescriptor {
		d := "sha256:" + sha256Hex(b)
		blobs[d] = b
		return ociDescriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
	}
	epoch := time.Unix(0, 0).UTC()
	var cmd []string // what runs when a container names no command
	if entrypoint == nil {
		cmd = []string{"/bin/sh"}
	}
	config, _ := json.Marshal(ociConfig{
		Created:      epoch,
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Config: ociExecConfig{
			Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Entrypoint: entrypoint,
			Cmd:        cmd,
			WorkingDir: "/",
		},
		RootFS:  ociRootFS{Type: "layers", DiffIDs: []string{"sha256:" + sha256Hex(tarred)}},
		History: []ociHistory{{Created: epoch, CreatedBy: "capd tests/k8s_images_test.go"}},
	})
	manifest, _ := json.Marshal(ociManifest{
		SchemaVersion: 2,
		MediaType:     "application/vnd.oci.image.manifest.v1+json",
		Config:        blob("application/vnd.oci.image.config.v1+json", config),
		Layers:        []ociDescriptor{blob("application/vnd.oci.image.layer.v1.tar+gzip", gz.Bytes())},
	})
	md := blob("application/vnd.oci.image.manifest.v1+json", manifest)
	md.Platform = &ociPlatform{Architecture: runtime.GOARCH, OS: "linux"}
	_, tag, _ := strings.Cut(ref[strings.LastIndex(ref, "/")+1:], ":")
	md.Annotations = map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag}
	index, _ := json.Marshal(ociIndex{SchemaVersion: 2, MediaType: "application/vnd.oci.image.index.v1+json", Manifests: []ociDescriptor{md}})

	layout := []layerFile{
		{name: "blobs", mode: 0o755, typ: tar.TypeDir},
		{name: "blobs/sha256", mode: 0o755, typ: tar.TypeDir},
		{name: "index.json", mode: 0o644, typ: tar.TypeReg, data: index},
		{name: "oci-layout", mode: 0o644, typ: tar.TypeReg, data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
	}
	for _, d := range slices.Sorted(maps.Keys(blobs)) {
		layout = append(layout, layerFile{name: "blobs/sha256/" + strings.TrimPrefix(d, "sha256:"), mode: 0o644, typ: tar.TypeReg, data: blobs[d]})
	}
	return tarFiles(layout)
}

// tarFiles tars files in their order, owned by 0:0 and dated 1970.
func tarFiles(files []layerFile) ([]byte, error) {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: f.mode, Typeflag: f.typ, Linkname: f.link, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if f.typ == tar.TypeDir {
			h.Name += "/"
		}
		if f.typ == tar.TypeReg {
			h.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, err
		}
	}
	err := tw.Close()
	return b.Bytes(), err
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// The OCI image spec's documents, as much of them as these images use.
type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *ociPlatform      `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type ociPlatform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type ociIndex struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Manifests     []ociDescriptor `json:"manifests"`
}

type ociManifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     string          `json:"mediaType"`
	Config        ociDescriptor   `json:"config"`
	Layers        []ociDescriptor `json:"layers"`
}

type ociConfig struct {
	Created      time.Time     `json:"created"`
	Architecture string        `json:"architecture"`
	OS           string        `json:"os"`
	Config       ociExecConfig `json:"config"`
	RootFS       ociRootFS     `json:"rootfs"`
	History      []ociHistory  `json:"history"`
}

type ociExecConfig struct {
	Env        []string `json:"Env"`
	Entrypoint []string `json:"Entrypoint,omitempty"`
	Cmd        []string `json:"Cmd,omitempty"`
	WorkingDir string   `json:"WorkingDir"`
}

type ociRootFS struct {
	Type    string   `json:"type"`
	DiffIDs []string `json:"diff_ids"`
}

type ociHistory struct {
	Created   time.Time `json:"created"`
	CreatedBy string    `json:"created_by"`
}
