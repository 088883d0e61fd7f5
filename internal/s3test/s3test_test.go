package s3test_test

import (
	"context"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/stretchr/testify/require"

	"github.com/spiredb/spiredb/internal/harness"
	"github.com/spiredb/spiredb/internal/s3test"
)

func TestMain(m *testing.M) { harness.Main(m) }

func TestPutGetAndSignatureCheck(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := s3test.NewBucket(t)
	c := b.Client()
	_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(b.Name), Key: aws.String("a/b"), Body: strings.NewReader("hello")})
	require.NoError(t, err)
	out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(b.Name), Key: aws.String("a/b")})
	require.NoError(t, err)
	require.EqualValues(t, 5, *out.ContentLength)
	_ = out.Body.Close()

	// A wrong secret key must be refused: the server really checks SigV4.
	bad := s3.New(s3.Options{Region: s3test.Region, BaseEndpoint: aws.String(b.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(b.AccessKey, "not-the-secret", "")})
	_, err = bad.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(b.Name), Key: aws.String("a/b")})
	require.Error(t, err)
	require.Contains(t, err.Error(), "SignatureDoesNotMatch")
}

func TestBucketsAreSeparate(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := s3test.NewBucket(t), s3test.NewBucket(t)
	require.NotEqual(t, a.Name, b.Name)
	out, err := b.Client().ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(b.Name)})
	require.NoError(t, err)
	require.Empty(t, out.Contents)
}
