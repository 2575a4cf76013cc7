package s3test

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/johannesboyne/gofakes3"
	"github.com/ryszard/goskiplist/skiplist"
)

// indexed lists a bucket by seeking in a sorted index of its keys. The
// memory backend lists by scanning every object of the bucket from the
// first, whatever the prefix, and steps through every key under a common
// prefix: a registry's bucket of 10⁵ objects listed 10⁴ times would take
// hours. Listing here costs what it returns. Answers are the backend's
// (the same keys, prefixes, markers and truncation).
type indexed struct {
	gofakes3.Backend
	bucket string
	mu     sync.RWMutex
	keys   *skiplist.SkipList // key → entry
}

type entry struct {
	size     int64
	hash     []byte
	modified time.Time
}

func newIndexed(b gofakes3.Backend, bucket string) *indexed {
	return &indexed{Backend: b, bucket: bucket, keys: skiplist.NewStringMap()}
}

func (x *indexed) PutObject(bucket, key string, meta map[string]string, input io.Reader, size int64, cond *gofakes3.PutConditions) (gofakes3.PutObjectResult, error) {
	b, err := io.ReadAll(input)
	if err != nil {
		return gofakes3.PutObjectResult{}, err
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	res, err := x.Backend.PutObject(bucket, key, meta, bytes.NewReader(b), int64(len(b)), cond)
	if err != nil || bucket != x.bucket {
		return res, err
	}
	obj, err := x.Backend.HeadObject(bucket, key)
	if err != nil {
		return res, err
	}
	mod, _ := time.Parse(http.TimeFormat, obj.Metadata["Last-Modified"])
	x.keys.Set(key, entry{size: obj.Size, hash: obj.Hash, modified: mod})
	return res, nil
}

func (x *indexed) DeleteObject(bucket, key string) (gofakes3.ObjectDeleteResult, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	res, err := x.Backend.DeleteObject(bucket, key)
	if err == nil && bucket == x.bucket {
		x.keys.Delete(key)
	}
	return res, err
}

func (x *indexed) DeleteMulti(bucket string, keys ...string) (gofakes3.MultiDeleteResult, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	res, err := x.Backend.DeleteMulti(bucket, keys...)
	if err == nil && bucket == x.bucket {
		for _, d := range res.Deleted {
			x.keys.Delete(d.Key)
		}
	}
	return res, err
}

func (x *indexed) CopyObject(srcBucket, srcKey, dstBucket, dstKey string, meta map[string]string) (gofakes3.CopyObjectResult, error) {
	return gofakes3.CopyObject(x, srcBucket, srcKey, dstBucket, dstKey, meta)
}

// after returns the smallest string greater than every string that starts
// with p.
func after(p string) string {
	return p + string(utf8.MaxRune)
}

func (x *indexed) ListBucket(name string, prefix *gofakes3.Prefix, page gofakes3.ListBucketPage) (*gofakes3.ObjectList, error) {
	if name != x.bucket {
		return x.Backend.ListBucket(name, prefix, page)
	}
	var pre, delim string
	if prefix != nil {
		pre, delim = prefix.Prefix, prefix.Delimiter
		if !prefix.HasDelimiter {
			delim = ""
		}
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	out := gofakes3.NewObjectList()
	it := x.keys.Seek(pre)
	if it == nil {
		return out, nil
	}
	defer it.Close()
	if page.Marker != "" && page.Marker >= pre {
		from := page.Marker + "\x00" // the first key after the marker
		if delim != "" && strings.HasSuffix(page.Marker, delim) {
			from = after(page.Marker) // the marker was a common prefix
		}
		if !it.Seek(from) {
			return out, nil
		}
	}
	var n int64
	var last string // the last key or common prefix answered
	for ok := true; ok; {
		key := it.Key().(string)
		if !strings.HasPrefix(key, pre) {
			break
		}
		if page.MaxKeys > 0 && n == page.MaxKeys {
			// Only a truncated answer names where to go on (gofakes3
			// turns any marker into a continuation token).
			out.IsTruncated, out.NextMarker = true, last
			break
		}
		n++
		if i := strings.Index(key[len(pre):], delim); delim != "" && i >= 0 {
			cp := key[:len(pre)+i+len(delim)]
			out.AddPrefix(cp)
			last = cp
			ok = it.Seek(after(cp))
			continue
		}
		e := it.Value().(entry)
		out.Add(&gofakes3.Content{Key: key, LastModified: gofakes3.NewContentTime(e.modified),
			ETag: gofakes3.FormatETag(e.hash), Size: e.size})
		last = key
		ok = it.Next()
	}
	return out, nil
}
