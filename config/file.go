package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// Bounds on the files a module names. Each is read afresh at every probe
// that uses it, and a larger file fails the probe rather than taking a
// bigger buffer.
const (
	// MaxSecretFileBytes bounds password_file, token_file,
	// client_secret_file and refresh_token_file. Access tokens, the largest
	// of these, are a few KiB.
	MaxSecretFileBytes = 64 << 10
	// MaxTLSFileBytes bounds the ca_file, cert_file and key_file of a
	// tls_config. A bundle of every public root CA is about 220 KiB.
	MaxTLSFileBytes = 1 << 20
	// MaxAttachmentBytes bounds each attachment of the canary message, so
	// that a path pointing at a log file or a disk image fails the probe
	// clearly instead of sending it.
	MaxAttachmentBytes = 10 << 20
)

// Errors of ReadFile, for errors.Is.
var (
	ErrNotRegularFile = errors.New("not a regular file")
	ErrFileTooLarge   = errors.New("file too large")
)

// FileError is an error of ReadFile: the file's key in the configuration
// ("password_file", "ca_file", ...), its path, and what went wrong. It
// names the path once.
type FileError struct {
	Key  string
	Path string
	Err  error
}

func (e *FileError) Error() string { return e.Key + " " + e.Path + ": " + e.Err.Error() }

func (e *FileError) Unwrap() error { return e.Err }

// ReadFile reads the file at path, which the configuration names under key,
// in a way no file can hold up or exhaust the reader: only a regular file
// (or a symbolic link to one, as Kubernetes mounts Secrets and ConfigMaps)
// of at most limit bytes is read.
//
// A named pipe would block open(2) until a writer came, and a read of it or
// of a device such as /dev/zero might never end; neither is ever read. The
// path is checked with stat(2) first, so that no device is opened at all
// (opening some has effects), then opened without blocking and checked
// again on the open file, which may since have been replaced. The read
// stops one byte past limit, so a file that grows meanwhile costs no more.
func ReadFile(key, path string, limit int64) ([]byte, error) {
	fail := func(err error) ([]byte, error) {
		if pe, ok := errors.AsType[*fs.PathError](err); ok {
			err = pe.Err // the path is named once, by FileError
		}
		return nil, &FileError{Key: key, Path: path, Err: err}
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fail(err)
	}
	if err := checkFile(fi, limit); err != nil {
		return fail(err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fail(err)
	}
	defer f.Close()
	if fi, err = f.Stat(); err != nil {
		return fail(err)
	}
	if err := checkFile(fi, limit); err != nil {
		return fail(err)
	}
	// One allocation for a file that keeps its size; /proc and the like
	// report 0 and grow the buffer as they are read.
	var b bytes.Buffer
	b.Grow(int(fi.Size()) + bytes.MinRead)
	if _, err := b.ReadFrom(io.LimitReader(f, limit+1)); err != nil {
		return fail(err)
	}
	if int64(b.Len()) > limit {
		return fail(fmt.Errorf("%w: it grew past the limit of %d bytes while read", ErrFileTooLarge, limit))
	}
	return b.Bytes(), nil
}

// checkFile refuses anything but a regular file of at most limit bytes.
func checkFile(fi fs.FileInfo, limit int64) error {
	mode := fi.Mode()
	if !mode.IsRegular() {
		return fmt.Errorf("%w (%s)", ErrNotRegularFile, fileType(mode))
	}
	if fi.Size() > limit {
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrFileTooLarge, fi.Size(), limit)
	}
	return nil
}

// fileType names the type of a file that is not a regular one. Both stats
// of ReadFile follow symbolic links, so a link is never what it sees.
func fileType(mode fs.FileMode) string {
	switch {
	case mode.IsDir():
		return "a directory"
	case mode&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case mode&fs.ModeSocket != 0:
		return "a socket"
	case mode&fs.ModeCharDevice != 0:
		return "a character device"
	case mode&fs.ModeDevice != 0:
		return "a block device"
	}
	return "mode " + mode.String()
}
