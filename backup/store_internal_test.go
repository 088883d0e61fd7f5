package backup

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestS3PartSizeGrowsWithTheDatabase(t *testing.T) {
	t.Parallel()
	s, err := newS3Store(context.Background(), "b", "p", StoreOptions{S3Region: "us-east-1", S3Credentials: &StaticCredentials{AccessKey: "a", SecretKey: "b"}})
	require.NoError(t, err)
	require.EqualValues(t, minPartSize, s.partSize)
	require.Same(t, s, s.ForSize(1<<30), "1 GiB fits in 9,000 parts of 5 MiB")
	big := s.ForSize(200 << 30).(*S3Store)
	require.Greater(t, big.partSize*maxPartsTarget, int64(200<<30))
	require.Zero(t, big.partSize%(1<<20))
	require.EqualValues(t, minPartSize, s.partSize, "ForSize must not change the original")
}
