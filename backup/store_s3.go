package backup

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager"
	tmtypes "github.com/aws/aws-sdk-go-v2/feature/s3/transfermanager/types"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/aws/smithy-go/logging"
)

// Part sizes: S3's minimum, and how many parts a sized upload may use (S3
// allows 10,000).
const (
	minPartSize    = 5 << 20
	maxPartsTarget = 9000
)

// sdkLogger hands the AWS SDK's messages to spiredb's logger at debug
// level: its warnings are about its own fallbacks (IMDSv1, skipped
// checksums), and what they mean for the run reaches the operator as
// spiredb's error.
type sdkLogger struct{ l *slog.Logger }

func (s sdkLogger) Logf(c logging.Classification, format string, v ...any) {
	s.l.Debug("aws sdk: "+fmt.Sprintf(format, v...), "classification", string(c))
}

// S3Store keeps backups under a bucket prefix. Uploads stream through the
// transfer manager in parts, so memory stays near PartSize × (Concurrency+1)
// whatever the object size; an object appears only when its multipart upload
// completes.
type S3Store struct {
	bucket, prefix string
	client         *s3.Client
	tm             *transfermanager.Client
	partSize       int64
	concurrency    int
	sse            types.ServerSideEncryption
	kmsKeyID       string
}

// defaultStallTimeout is StoreOptions.StallTimeout's default.
const defaultStallTimeout = 3 * time.Minute

// writeDeadlineConn fails a write that makes no progress for timeout: an
// upload whose server stopped reading would otherwise block forever (the
// wait for response headers starts only once the request is written).
type writeDeadlineConn struct {
	net.Conn
	timeout time.Duration
}

func (c *writeDeadlineConn) Write(p []byte) (int, error) {
	if err := c.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		return 0, err
	}
	n, err := c.Conn.Write(p)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return n, fmt.Errorf("the S3 endpoint took no data for %s: %w", c.timeout, err)
	}
	return n, err
}

func newS3Store(ctx context.Context, bucket, prefix string, o StoreOptions) (*S3Store, error) {
	var loadOpts []func(*config.LoadOptions) error
	if o.S3Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(o.S3Region))
	}
	if o.S3Credentials != nil {
		loadOpts = append(loadOpts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(
			o.S3Credentials.AccessKey, o.S3Credentials.SecretKey, o.S3Credentials.SessionToken)))
	}
	// An endpoint that accepts connections and never answers must not hang
	// a run: bounded dial, TLS handshake and wait for response headers, and
	// a transfer that stops making progress in either direction fails
	// (never a bound on the whole transfer, which streams for as long as
	// the dump).
	stall := cmp.Or(o.StallTimeout, defaultStallTimeout)
	loadOpts = append(loadOpts, config.WithHTTPClient(awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = 10 * time.Second }).
		WithTransportOptions(func(tr *http.Transport) {
			tr.TLSHandshakeTimeout = 10 * time.Second
			tr.ResponseHeaderTimeout = time.Minute
			tr.IdleConnTimeout = 90 * time.Second
			dial := tr.DialContext
			tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				c, err := dial(ctx, network, addr)
				if err != nil {
					return nil, err
				}
				return &writeDeadlineConn{Conn: c, timeout: stall}, nil
			}
		}).
		// reads: the SDK's own rolling deadline, reset on every byte
		WithReadTimeout(stall)))
	loadOpts = append(loadOpts, config.WithLogger(sdkLogger{cmp.Or(o.Logger, slog.Default())}))
	cfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		return nil, fmt.Errorf("loading AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		if o.S3Endpoint != "" {
			so.BaseEndpoint = aws.String(o.S3Endpoint)
		}
		so.UsePathStyle = o.S3PathStyle
		// objects uploaded in parts carry no whole-object checksum; the
		// manifest's sha256 is what verify checks, so the SDK's warning
		// about it would only be noise on stderr
		so.DisableLogOutputChecksumValidationSkipped = true
	})
	partSize := o.PartSize
	if partSize == 0 {
		partSize = minPartSize
	}
	conc := o.Concurrency
	if conc == 0 {
		conc = 2
	}
	s := &S3Store{bucket: bucket, prefix: prefix, client: client, concurrency: conc}
	s.setPartSize(partSize)
	switch o.SSE {
	case "":
	case "AES256":
		s.sse = types.ServerSideEncryptionAes256
	case "aws:kms":
		s.sse = types.ServerSideEncryptionAwsKms
		s.kmsKeyID = o.SSEKMSKeyID
	default:
		return nil, fmt.Errorf("invalid --sse %q: want AES256 or aws:kms", o.SSE)
	}
	if o.SSEKMSKeyID != "" && o.SSE != "aws:kms" {
		return nil, errors.New("--sse-kms-key-id needs --sse aws:kms")
	}
	return s, nil
}

func (s *S3Store) setPartSize(partSize int64) {
	s.partSize = partSize
	s.tm = transfermanager.New(s.client, func(to *transfermanager.Options) {
		to.PartSizeBytes = partSize
		// the first part is read with a growing buffer up to this
		// threshold: keep it at one part so memory stays near
		// PartSize × (Concurrency+2)
		to.MultipartUploadThreshold = partSize
		to.Concurrency = s.concurrency
	})
}

// ForSize returns the store with a part size large enough for an object of
// about expected bytes to fit in S3's 10,000 parts (streams have no length
// to let the uploader choose).
func (s *S3Store) ForSize(expected int64) Store {
	need := (expected/maxPartsTarget + (1 << 20)) &^ ((1 << 20) - 1) // round up to MiB
	if need <= s.partSize {
		return s
	}
	c := *s
	c.setPartSize(need)
	return &c
}

func (s *S3Store) String() string {
	if s.prefix == "" {
		return "s3://" + s.bucket
	}
	return "s3://" + s.bucket + "/" + s.prefix
}

func (s *S3Store) key(k string) string {
	if s.prefix == "" {
		return k
	}
	return s.prefix + "/" + k
}

func (s *S3Store) rel(k string) string {
	if s.prefix == "" {
		return k
	}
	return strings.TrimPrefix(k, s.prefix+"/")
}

// Check verifies that the bucket exists and the credentials are accepted.
func (s *S3Store) Check(ctx context.Context) error {
	_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.bucket)})
	if err != nil {
		return &StoreError{Store: s.String(), Err: explainS3(err, s.bucket)}
	}
	return nil
}

// explainS3 turns SDK errors into the one cause an operator can act on.
func explainS3(err error, bucket string) error {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case 404:
			return fmt.Errorf("bucket %q does not exist", bucket)
		case 403:
			return fmt.Errorf("access denied to bucket %q: check the credentials and the bucket policy", bucket)
		case 301, 400:
			var ae smithy.APIError
			if errors.As(err, &ae) {
				return fmt.Errorf("bucket %q: %s: %s (check the region and endpoint)", bucket, ae.ErrorCode(), ae.ErrorMessage())
			}
		}
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		switch ae.ErrorCode() {
		case "NoSuchBucket", "NotFound":
			return fmt.Errorf("bucket %q does not exist", bucket)
		case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "Forbidden":
			return fmt.Errorf("access denied to bucket %q (%s): check the credentials", bucket, ae.ErrorCode())
		}
		return fmt.Errorf("%s: %s", ae.ErrorCode(), ae.ErrorMessage())
	}
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &oe) || errors.As(err, &ne) {
		return fmt.Errorf("cannot reach the S3 endpoint: %w", err)
	}
	if strings.Contains(err.Error(), "failed to retrieve credentials") || strings.Contains(err.Error(), "no EC2 IMDS role found") {
		return errors.New("no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a role")
	}
	return err
}

// Put streams r into key with a multipart upload.
func (s *S3Store) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	cr := &countingReader{r: r}
	in := &transfermanager.UploadObjectInput{
		Bucket:               aws.String(s.bucket),
		Key:                  aws.String(s.key(key)),
		Body:                 cr,
		ServerSideEncryption: tmtypes.ServerSideEncryption(s.sse),
	}
	if s.kmsKeyID != "" {
		in.SSEKMSKeyID = aws.String(s.kmsKeyID)
	}
	if _, err := s.tm.UploadObject(ctx, in); err != nil {
		return cr.n, fmt.Errorf("uploading %s: %w", key, explainS3(err, s.bucket))
	}
	return cr.n, nil
}

// Get streams key.
func (s *S3Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.key(key))})
	if err != nil {
		var nk *types.NoSuchKey
		if errors.As(err, &nk) {
			return nil, fmt.Errorf("%s: %w", key, ErrNotFound)
		}
		return nil, fmt.Errorf("reading %s: %w", key, explainS3(err, s.bucket))
	}
	return out.Body, nil
}

// List returns every object under prefix.
func (s *S3Store) List(ctx context.Context, prefix string) ([]Object, error) {
	full := s.key(prefix)
	if s.prefix != "" && prefix == "" {
		full = s.prefix + "/"
	}
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(full)})
	var out []Object
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, &StoreError{Store: s.String(), Err: explainS3(err, s.bucket)}
		}
		for _, o := range page.Contents {
			out = append(out, Object{Key: s.rel(aws.ToString(o.Key)), Size: aws.ToInt64(o.Size), Modified: aws.ToTime(o.LastModified)})
		}
	}
	return out, nil
}

// Delete removes keys one by one (DeleteObjects needs Content-MD5 support
// that not every S3-compatible server has).
func (s *S3Store) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(s.key(k))}); err != nil {
			return fmt.Errorf("deleting %s: %w", k, explainS3(err, s.bucket))
		}
	}
	return nil
}

// Incomplete lists multipart uploads under the prefix that never completed.
func (s *S3Store) Incomplete(ctx context.Context) ([]Upload, error) {
	in := &s3.ListMultipartUploadsInput{Bucket: aws.String(s.bucket)}
	if s.prefix != "" {
		in.Prefix = aws.String(s.prefix + "/")
	}
	var out []Upload
	for {
		page, err := s.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return nil, &StoreError{Store: s.String(), Err: explainS3(err, s.bucket)}
		}
		for _, u := range page.Uploads {
			out = append(out, Upload{Key: s.rel(aws.ToString(u.Key)), ID: aws.ToString(u.UploadId), Initiated: aws.ToTime(u.Initiated)})
		}
		if !aws.ToBool(page.IsTruncated) {
			return out, nil
		}
		in.KeyMarker, in.UploadIdMarker = page.NextKeyMarker, page.NextUploadIdMarker
	}
}

// Abort aborts a multipart upload.
func (s *S3Store) Abort(ctx context.Context, u Upload) error {
	_, err := s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
		Bucket: aws.String(s.bucket), Key: aws.String(s.key(u.Key)), UploadId: aws.String(u.ID)})
	if err != nil {
		return fmt.Errorf("aborting upload of %s: %w", u.Key, explainS3(err, s.bucket))
	}
	return nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
