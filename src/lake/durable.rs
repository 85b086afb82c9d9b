//! A local lake whose writes are durable when they return.
//!
//! object_store's `LocalFileSystem` writes a staged file and links it into
//! place, which is atomic but not durable: after a power cut the file (or the
//! directory entry naming it) can be gone although the write returned. ferry
//! commits state only after the data it describes is durable (a cursor after
//! its rows, a sync-log file after the CRM confirmed, a webhook's 200 after
//! its inbox file), so on a local lake every completed write is followed by
//! an fsync of the file and of the directories that name it. Object stores
//! (S3, GCS, Azure) are durable on completion and are not wrapped.
//!
//! `LocalFileSystem` has no conditional update (`PutMode::Update`), which
//! leases need. Here it is: under an exclusive OS file lock on a sibling of
//! the object (`<name>#0`, which listings skip, as they skip
//! `LocalFileSystem`'s own staging files), the object's current version is
//! compared with the expected one and the new content is written atomically
//! (staged, then renamed), or the write fails with `Precondition`. The lock
//! lives in the lake itself, so every process that can see the lake sees
//! the lock, whatever its temp folder or mount path (on NFS, Linux maps
//! `flock` to NFS locks).

use std::ops::Range;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result, UploadPart,
};

/// `LocalFileSystem` with fsync after every completed write.
#[derive(Debug)]
pub struct DurableLocal {
    inner: LocalFileSystem,
    root: PathBuf,
}

impl DurableLocal {
    pub fn new(inner: LocalFileSystem, root: PathBuf) -> DurableLocal {
        DurableLocal { inner, root }
    }

    async fn sync(&self, location: &Path) -> Result<()> {
        let file = self.inner.path_to_filesystem(location)?;
        sync_path(file, self.root.clone()).await
    }
}

/// Run blocking file work off the async threads; its errors as the store's.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let generic = |e: Box<dyn std::error::Error + Send + Sync>| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: e,
    };
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| generic(Box::new(e)))?
        .map_err(|e| generic(Box::new(e)))
}

/// An exclusive lock for conditional updates of `file`, held until dropped.
async fn lock(file: PathBuf) -> Result<std::fs::File> {
    blocking(move || -> std::io::Result<std::fs::File> {
        let mut name = file.as_os_str().to_owned();
        name.push("#0");
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::path::PathBuf::from(name))?;
        f.lock()?;
        Ok(f)
    })
    .await
}

/// fsync `file`, then each directory from its parent up to `root`
/// (directories a write created are durable only once their parent is).
async fn sync_path(file: PathBuf, root: PathBuf) -> Result<()> {
    blocking(move || -> std::io::Result<()> {
        std::fs::File::open(&file)?.sync_all()?;
        let mut dir = file.parent();
        while let Some(d) = dir {
            std::fs::File::open(d)?.sync_all()?;
            if d == root || !d.starts_with(&root) {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    })
    .await
}

impl std::fmt::Display for DurableLocal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Durable({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for DurableLocal {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if let PutMode::Update(expected) = &opts.mode {
            let file = self.inner.path_to_filesystem(location)?;
            let _guard = lock(file).await?;
            let current = match self.inner.head(location).await {
                Ok(m) => m,
                Err(object_store::Error::NotFound { path, source }) => {
                    return Err(object_store::Error::Precondition { path, source });
                }
                Err(e) => return Err(e),
            };
            if expected.e_tag.is_some() && current.e_tag != expected.e_tag {
                return Err(object_store::Error::Precondition {
                    path: location.to_string(),
                    source: format!(
                        "the object's version is {:?}, not the expected {:?}",
                        current.e_tag, expected.e_tag
                    )
                    .into(),
                });
            }
            let overwrite = PutOptions {
                mode: PutMode::Overwrite,
                ..opts
            };
            let r = self.inner.put_opts(location, payload, overwrite).await?;
            self.sync(location).await?;
            return Ok(r);
        }
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.sync(location).await?;
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let upload = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(DurableUpload {
            upload,
            file: self.inner.path_to_filesystem(location)?,
            root: self.root.clone(),
        }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await?;
        self.sync(to).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await?;
        self.sync(to).await
    }
}

/// A multipart upload that fsyncs the finished file.
#[derive(Debug)]
struct DurableUpload {
    upload: Box<dyn MultipartUpload>,
    file: PathBuf,
    root: PathBuf,
}

#[async_trait]
impl MultipartUpload for DurableUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.upload.put_part(data)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.upload.complete().await?;
        sync_path(self.file.clone(), self.root.clone()).await?;
        Ok(r)
    }

    async fn abort(&mut self) -> Result<()> {
        self.upload.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn writes_land_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        let store = DurableLocal::new(
            LocalFileSystem::new_with_prefix(&root).unwrap(),
            root.clone(),
        );
        let p = Path::from("a/b/c.txt");
        store.put(&p, PutPayload::from("hello")).await.unwrap();
        let got = store.get(&p).await.unwrap().bytes().await.unwrap();
        assert_eq!(&got[..], b"hello");
        assert!(root.join("a/b/c.txt").is_file());
        let mut up = store.put_multipart(&Path::from("m/x.bin")).await.unwrap();
        up.put_part(PutPayload::from("part")).await.unwrap();
        up.complete().await.unwrap();
        assert!(root.join("m/x.bin").is_file());
    }
}
