package jsensure

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream makes sure the stream cfg describes exists with cfg's settings
// and returns it: create, and on "already in use" an update only when
// Differs says the existing configuration is not cfg's (see the package
// doc). It blocks until the server answers or ctx ends; errors are the
// JetStream errors, wrapped with the stream's name.
func Stream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.CreateStream(ctx, cfg)
	if err == nil {
		return s, nil
	}
	if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) && !racedCreate(ctx, js, cfg.Name, err) {
		return nil, fmt.Errorf("jsensure: create stream %s: %w", cfg.Name, err)
	}
	s, err = js.Stream(ctx, cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("jsensure: stream %s: %w", cfg.Name, err)
	}
	if !Differs(cfg, s.CachedInfo().Config) {
		return s, nil
	}
	s, err = js.UpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("jsensure: update stream %s: %w", cfg.Name, err)
	}
	return s, nil
}

// KeyValue makes sure the bucket cfg describes exists and returns it, as
// Stream does for a stream. The settings compared are those of cfg that
// firmcast sets (description, history, storage, replicas); the rest are
// nats.go's defaults for a bucket.
func KeyValue(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := js.CreateKeyValue(ctx, cfg)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketExists) && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) &&
		!racedCreate(ctx, js, "KV_"+cfg.Bucket, err) {
		return nil, fmt.Errorf("jsensure: create bucket %s: %w", cfg.Bucket, err)
	}
	s, err := js.Stream(ctx, "KV_"+cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("jsensure: bucket %s: %w", cfg.Bucket, err)
	}
	history := int64(max(cfg.History, 1))
	want := jetstream.StreamConfig{
		Name: "KV_" + cfg.Bucket, Description: cfg.Description, MaxMsgsPerSubject: history,
		Storage: cfg.Storage, Replicas: cfg.Replicas,
	}
	if Differs(want, s.CachedInfo().Config) {
		kv, err = js.UpdateKeyValue(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("jsensure: update bucket %s: %w", cfg.Bucket, err)
		}
		return kv, nil
	}
	kv, err = js.KeyValue(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("jsensure: bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// ObjectStore makes sure the object store cfg describes exists and
// returns it, as Stream does for a stream. The settings compared are
// description, storage and replicas.
func ObjectStore(ctx context.Context, js jetstream.JetStream, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	obs, err := js.CreateObjectStore(ctx, cfg)
	if err == nil {
		return obs, nil
	}
	if !errors.Is(err, jetstream.ErrBucketExists) && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) &&
		!racedCreate(ctx, js, "OBJ_"+cfg.Bucket, err) {
		return nil, fmt.Errorf("jsensure: create object store %s: %w", cfg.Bucket, err)
	}
	s, err := js.Stream(ctx, "OBJ_"+cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("jsensure: object store %s: %w", cfg.Bucket, err)
	}
	want := jetstream.StreamConfig{Name: "OBJ_" + cfg.Bucket, Description: cfg.Description, Storage: cfg.Storage, Replicas: cfg.Replicas}
	if Differs(want, s.CachedInfo().Config) {
		obs, err = js.UpdateObjectStore(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("jsensure: update object store %s: %w", cfg.Bucket, err)
		}
		return obs, nil
	}
	obs, err = js.ObjectStore(ctx, cfg.Bucket)
	if err != nil {
		return nil, fmt.Errorf("jsensure: object store %s: %w", cfg.Bucket, err)
	}
	return obs, nil
}

// Differs reports whether the server's configuration have differs from
// want in a setting want makes. The server's defaults are normalised
// away: a field want leaves at its zero value is whatever the server
// chose, and of the metadata only want's keys count (servers from 2.11
// add their own).
func Differs(want, have jetstream.StreamConfig) bool {
	w, h := reflect.ValueOf(want), reflect.ValueOf(have)
	for i := range w.NumField() {
		wf := w.Field(i)
		if wf.IsZero() {
			continue
		}
		if w.Type().Field(i).Name == "Metadata" {
			if !metadataHas(have.Metadata, want.Metadata) {
				return true
			}
			continue
		}
		if !reflect.DeepEqual(wf.Interface(), h.Field(i).Interface()) {
			return true
		}
	}
	return false
}

// metadataHas reports whether have holds every key of want with its value.
func metadataHas(have, want map[string]string) bool {
	sub := maps.Clone(have)
	maps.Copy(sub, want)
	return maps.Equal(sub, have)
}

// errCodeSubjectOverlap is JetStream's "subjects overlap with an existing
// stream" (JSStreamSubjectOverlapErr).
const errCodeSubjectOverlap = 10065

// racedCreate reports whether err, a create's answer, came from another
// client creating the same stream at the same moment: nats-server 2.9.10
// can answer the second of two racing creates "subjects overlap with an
// existing stream" (the first one's subjects are taken before its name
// is), not "already in use" (TestServeReplicasOnGeneratedNATSConfig,
// two serve replicas starting together). It waits, briefly, for a stream
// of that name to appear; one that never does means a real overlap with
// another stream, and err stands.
func racedCreate(ctx context.Context, js jetstream.JetStream, name string, err error) bool {
	var api *jetstream.APIError
	if !errors.As(err, &api) || api.ErrorCode != errCodeSubjectOverlap {
		return false
	}
	for wait := 10 * time.Millisecond; wait <= 640*time.Millisecond; wait *= 2 {
		if _, err := js.Stream(ctx, name); err == nil {
			return true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
	return false
}
