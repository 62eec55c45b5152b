package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

func main() {
	dir, bucket := os.Args[1], os.Args[2]
	ep := strings.TrimPrefix(os.Getenv("TENANTVAULT_TEST_S3_ENDPOINT"), "http://")
	mc, err := minio.New(ep, &minio.Options{Creds: credentials.NewStaticV4(os.Getenv("AWS_ACCESS_KEY_ID"), os.Getenv("AWS_SECRET_ACCESS_KEY"), "")})
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	mc.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: "us-east-1"})
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			panic(err)
		}
		if fi.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if _, err := mc.FPutObject(ctx, bucket, "repo/"+rel, p, minio.PutObjectOptions{}); err != nil {
				panic(err)
			}
		}()
		return nil
	})
	wg.Wait()
}
