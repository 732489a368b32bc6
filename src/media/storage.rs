//! Where files are kept: a folder (`fs`) or an S3 bucket (`s3`), behind `object_store`'s one
//! interface. Keys are content-addressed per workspace: `<prefix><workspace>/<aa>/<sha256>`.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};

use crate::config::{MediaConfig, MediaStoreKind};

#[derive(Clone)]
pub struct MediaStore {
    inner: Arc<dyn ObjectStore>,
    prefix: String,
    /// `fs` or `s3`, for logs and metrics.
    pub kind: &'static str,
}

impl MediaStore {
    pub fn new(cfg: &MediaConfig) -> anyhow::Result<Self> {
        Ok(match cfg.store {
            MediaStoreKind::Fs => {
                std::fs::create_dir_all(&cfg.path).map_err(|e| {
                    anyhow::anyhow!("media.path: cannot create the folder {}: {e}", cfg.path)
                })?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(&cfg.path)
                    .map_err(|e| anyhow::anyhow!("media.path: {e}"))?;
                Self {
                    inner: Arc::new(local),
                    prefix: String::new(),
                    kind: "fs",
                }
            }
            MediaStoreKind::S3 => {
                let s3 = &cfg.s3;
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&s3.bucket)
                    .with_allow_http(s3.allow_http);
                if !s3.region.is_empty() {
                    b = b.with_region(&s3.region);
                }
                if !s3.endpoint.is_empty() {
                    b = b.with_endpoint(&s3.endpoint);
                }
                if let Some(k) = &s3.access_key_id {
                    b = b.with_access_key_id(k);
                }
                if let Some(k) = &s3.secret_access_key {
                    b = b.with_secret_access_key(k);
                }
                let store = b.build().map_err(|e| anyhow::anyhow!("media.s3: {e}"))?;
                let mut prefix = s3.prefix.trim_matches('/').to_owned();
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                Self {
                    inner: Arc::new(store),
                    prefix,
                    kind: "s3",
                }
            }
        })
    }

    /// The key of a workspace's file with this (hex) sha256.
    pub fn key(&self, workspace_id: i64, sha256: &str) -> String {
        format!("{}{workspace_id}/{}/{sha256}", self.prefix, &sha256[..2])
    }

    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), String> {
        self.inner
            .put(&Path::from(key), PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(|e| format!("cannot store the file ({}): {e}", self.kind))
    }

    /// The whole file.
    pub async fn read(&self, key: &str) -> Result<Bytes, String> {
        let got = self
            .inner
            .get(&Path::from(key))
            .await
            .map_err(|e| format!("cannot read the file ({}): {e}", self.kind))?;
        got.bytes()
            .await
            .map_err(|e| format!("cannot read the file ({}): {e}", self.kind))
    }

    /// The file as a stream of chunks, and its size.
    pub async fn stream(
        &self,
        key: &str,
    ) -> Result<(BoxStream<'static, object_store::Result<Bytes>>, u64), String> {
        let got = self
            .inner
            .get(&Path::from(key))
            .await
            .map_err(|e| format!("cannot read the file ({}): {e}", self.kind))?;
        let size = got.meta.size;
        Ok((got.into_stream(), size))
    }

    /// Deletes the file; one already gone is fine.
    pub async fn delete(&self, key: &str) -> Result<(), String> {
        match self.inner.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(format!("cannot delete the file ({}): {e}", self.kind)),
        }
    }
}
