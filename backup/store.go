package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/spiredb/spiredb/internal/dsn"
)

// Store is where backups live: an S3 bucket prefix or a local directory.
// Keys are relative to the store's root and use '/' separators.
type Store interface {
	// Put streams r into key. The object becomes visible only once complete:
	// a failed or interrupted Put leaves at most an Incomplete upload.
	Put(ctx context.Context, key string, r io.Reader) (int64, error)
	// Get streams an object.
	Get(ctx context.Context, key string) (io.ReadCloser, error)
	// List returns every object under prefix.
	List(ctx context.Context, prefix string) ([]Object, error)
	// Delete removes objects; a missing object is not an error.
	Delete(ctx context.Context, keys ...string) error
	// Incomplete lists uploads that never completed (S3 multipart uploads,
	// partial files of a killed process).
	Incomplete(ctx context.Context) ([]Upload, error)
	// Abort removes an incomplete upload.
	Abort(ctx context.Context, u Upload) error
	// Check fails with a clear error when the store cannot be read
	// (unreachable endpoint, wrong credentials, missing bucket). It needs
	// read access only.
	Check(ctx context.Context) error
	// String names the store without secrets.
	String() string
}

// writeChecker is implemented by stores that can tell up front whether a
// write will succeed (a local directory); commands that write call it
// before starting, reading commands never do.
type writeChecker interface {
	CheckWrite(ctx context.Context) error
}

// checkWrite checks read access, then write access where the store can.
func checkWrite(ctx context.Context, s Store) error {
	if err := s.Check(ctx); err != nil {
		return err
	}
	if w, ok := s.(writeChecker); ok {
		return w.CheckWrite(ctx)
	}
	return nil
}

// sizer is implemented by stores whose uploads must be sized up front.
type sizer interface{ ForSize(expected int64) Store }

// Object is a stored object.
type Object struct {
	Key      string
	Size     int64
	Modified time.Time
}

// Upload is an incomplete upload.
type Upload struct {
	Key       string
	ID        string
	Initiated time.Time
}

// ErrNotFound is returned by Get for a missing object.
var ErrNotFound = errors.New("object not found")

// StoreError says the store cannot be reached or used; the CLI maps it to
// the "unreachable" exit code.
type StoreError struct {
	Store string
	Err   error
}

func (e *StoreError) Error() string { return fmt.Sprintf("store %s: %v", e.Store, e.Err) }
func (e *StoreError) Unwrap() error { return e.Err }

// StoreOptions configure OpenStore.
type StoreOptions struct {
	// S3Endpoint overrides the endpoint (MinIO, versitygw, …); the SDK also
	// reads AWS_ENDPOINT_URL_S3 itself.
	S3Endpoint string
	// S3Region overrides the region from the default credential chain.
	S3Region string
	// S3PathStyle addresses buckets as path components.
	S3PathStyle bool
	// SSE is "", "AES256" or "aws:kms"; SSEKMSKeyID goes with aws:kms.
	SSE         string
	SSEKMSKeyID string
	// PartSize and Concurrency bound upload memory: about PartSize ×
	// (Concurrency+2). Defaults 5 MiB (S3's minimum; Run raises it for
	// databases large enough to need more than 9,000 parts) and 2.
	PartSize    int64
	Concurrency int
	// StallTimeout bounds how long a transfer may make no progress, in
	// either direction (a response body that stops, an upload the server
	// stops reading), before it fails and is retried; 0 means 3 minutes
	// (longer than an idle pooled connection lives plus the wait for
	// response headers, so no healthy request trips it).
	StallTimeout time.Duration
	// S3Credentials, when set, replaces the default credential chain.
	S3Credentials *StaticCredentials
	// Logger receives the AWS SDK's own messages (its warnings, such as
	// falling back to IMDSv1), at debug level; nil: slog.Default(). The
	// SDK would otherwise print them to stderr beside spiredb's one-line
	// errors.
	Logger *slog.Logger
}

// StaticCredentials are explicit S3 keys (tests; operators use the default
// credential chain).
type StaticCredentials struct{ AccessKey, SecretKey, SessionToken string }

// OpenStore opens s3://bucket/prefix or file:///dir.
func OpenStore(ctx context.Context, rawURL string, opts StoreOptions) (Store, error) {
	if rawURL == "" {
		return nil, errors.New("no store: pass --store s3://bucket/prefix or file:///dir")
	}
	shown := dsn.Redact(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("invalid store URL %q", shown)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return nil, fmt.Errorf("invalid store URL %q: file URLs take an absolute path, file:///dir", shown)
		}
		if u.Path == "" {
			return nil, fmt.Errorf("invalid store URL %q: no directory", shown)
		}
		return NewFileStore(u.Path)
	case "s3":
		if u.Host == "" {
			return nil, fmt.Errorf("invalid store URL %q: no bucket", shown)
		}
		if u.User != nil {
			return nil, fmt.Errorf("invalid store URL: credentials do not belong in the URL; use the AWS credential chain")
		}
		return newS3Store(ctx, u.Host, strings.Trim(u.Path, "/"), opts)
	}
	return nil, fmt.Errorf("invalid store URL %q: want s3://bucket/prefix or file:///dir", shown)
}
