//! A lake on an object store reached over the network (S3, GCS, Azure),
//! where a reply can be lost after the write was applied.
//!
//! `object_store` retries a PUT whose connection dropped. For a plain PUT
//! that is harmless; for a conditional one it is not: the retry of a
//! `PutMode::Create` that already landed finds its own object and fails
//! `AlreadyExists`, and the retry of a `PutMode::Update` finds the version
//! it wrote itself and fails `Precondition`. ferry would then take its own
//! write for another writer's: a landing failed, a Delta commit retried at
//! the next version (the same rows committed twice), a lease given up.
//!
//! A lost reply `object_store` does not retry (a timeout or a reset after
//! the request was sent: conditional PUTs are not idempotent to it) comes
//! back as a plain error though the write may have landed.
//!
//! [`Confirming`] settles both by reading the object back: if it holds
//! exactly the bytes this call sent, the write was this call's and it
//! succeeded. Conditional writes ferry makes carry something unique to their
//! writer (a run id in the name, a Delta commit's transaction id and time, a
//! lease holder's id, pid and expiry), so equal bytes are another writer's
//! only where two writers want the very same content (a stream's next schema
//! version, planned alike by two concurrent landings), and then the object
//! holds what each wanted.
//!
//! A refusal whose object cannot be found (S3 answers 409 to two creates
//! racing on one key, and neither may land) is not taken as "exists": it
//! comes back as a retryable error, so a webhook is not acknowledged as a
//! duplicate of a write that never landed.

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};

/// An object store whose conditional writes survive a lost reply.
#[derive(Debug)]
pub struct Confirming(pub Arc<dyn ObjectStore>);

impl std::fmt::Display for Confirming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Confirming {
    /// After a conditional write was refused: the object's version if it
    /// holds exactly `sent`, else the refusal.
    async fn settle(
        &self,
        location: &Path,
        sent: &PutPayload,
        refused: object_store::Error,
    ) -> Result<PutResult> {
        let got = match self.0.get(location).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. })
                if matches!(refused, object_store::Error::AlreadyExists { .. }) =>
            {
                return Err(object_store::Error::Generic {
                    store: "lake",
                    source: format!(
                        "a conditional create of {location} was refused, yet nothing is there \
                         (a concurrent create conflicted): nothing was stored; running again may succeed ({refused})"
                    )
                    .into(),
                });
            }
            Err(_) => return Err(refused),
        };
        let meta = got.meta.clone();
        let Ok(held) = got.bytes().await else {
            return Err(refused);
        };
        if held.len() != sent.content_length() || !same(&held, sent) {
            return Err(refused);
        }
        tracing::debug!(%location, "a conditional write's reply was lost; the object holds what was sent");
        Ok(PutResult {
            e_tag: meta.e_tag,
            version: meta.version,
        })
    }
}

fn same(held: &Bytes, sent: &PutPayload) -> bool {
    let mut at = 0;
    for chunk in sent.iter() {
        if held.get(at..at + chunk.len()) != Some(&chunk[..]) {
            return false;
        }
        at += chunk.len();
    }
    at == held.len()
}

#[async_trait]
impl ObjectStore for Confirming {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let conditional = matches!(opts.mode, PutMode::Create | PutMode::Update(_));
        let sent = conditional.then(|| payload.clone());
        match self.0.put_opts(location, payload, opts).await {
            Err(
                e @ (object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. }
                | object_store::Error::Generic { .. }),
            ) if conditional => self.settle(location, sent.as_ref().unwrap(), e).await,
            r => r,
        }
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.0.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.0.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::UpdateVersion;
    use object_store::memory::InMemory;

    /// How a [`Faulty`] store answers a PUT.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        /// Applies the write, then reports the retry's refusal, as
        /// `object_store` does after a reply lost on a dropped connection.
        LostReply,
        /// Fails as a timeout does (not retried), the write applied or not.
        TimedOut { landed: bool },
        /// Refuses a create as existing though nothing is stored (S3's 409
        /// to two racing creates).
        Conflict,
    }

    #[derive(Debug)]
    struct Faulty(InMemory, Fault);

    impl std::fmt::Display for Faulty {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Faulty({:?})", self.1)
        }
    }

    #[async_trait]
    impl ObjectStore for Faulty {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            let refusal = |mode: &PutMode| match mode {
                PutMode::Create => Some(object_store::Error::AlreadyExists {
                    path: l.to_string(),
                    source: "412 on the retry".into(),
                }),
                PutMode::Update(_) => Some(object_store::Error::Precondition {
                    path: l.to_string(),
                    source: "412 on the retry".into(),
                }),
                PutMode::Overwrite => None,
            };
            match self.1 {
                Fault::LostReply => {
                    let refused = refusal(&o.mode);
                    match (self.0.put_opts(l, p, o).await, refused) {
                        (Ok(_), Some(e)) => Err(e),
                        (r, _) => r,
                    }
                }
                Fault::TimedOut { landed } => {
                    if landed {
                        self.0.put_opts(l, p, o).await?;
                    }
                    Err(object_store::Error::Generic {
                        store: "S3",
                        source: "error sending request: operation timed out".into(),
                    })
                }
                Fault::Conflict => Err(object_store::Error::AlreadyExists {
                    path: l.to_string(),
                    source: "409 ConditionalRequestConflict".into(),
                }),
            }
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, l: &Path, o: GetOptions) -> Result<GetResult> {
            self.0.get_opts(l, o).await
        }
        fn delete_stream(
            &self,
            l: BoxStream<'static, Result<Path>>,
        ) -> BoxStream<'static, Result<Path>> {
            self.0.delete_stream(l)
        }
        fn list(&self, p: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.0.list(p)
        }
        async fn list_with_delimiter(&self, p: Option<&Path>) -> Result<ListResult> {
            self.0.list_with_delimiter(p).await
        }
        async fn copy_opts(&self, f: &Path, t: &Path, o: CopyOptions) -> Result<()> {
            self.0.copy_opts(f, t, o).await
        }
    }

    fn faulty(fault: Fault) -> Confirming {
        Confirming(Arc::new(Faulty(InMemory::new(), fault)))
    }

    fn create() -> PutOptions {
        PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_conditional_write_whose_reply_was_lost_is_this_writers_success() {
        let store = faulty(Fault::LostReply);
        let path = Path::from("_delta_log/00000000000000000001.json");
        let first = store
            .put_opts(
                &path,
                PutPayload::from_static(b"commit by writer a"),
                create(),
            )
            .await
            .expect("the applied create is confirmed, not refused");
        // Another writer's create of the same object is still refused.
        let other = store
            .put_opts(
                &path,
                PutPayload::from_static(b"commit by writer b"),
                create(),
            )
            .await;
        assert!(
            matches!(other, Err(object_store::Error::AlreadyExists { .. })),
            "{other:?}"
        );
        // An update whose reply was lost, then a stale update.
        let update = |v: &PutResult| PutOptions {
            mode: PutMode::Update(UpdateVersion {
                e_tag: v.e_tag.clone(),
                version: v.version.clone(),
            }),
            ..Default::default()
        };
        let second = store
            .put_opts(
                &path,
                PutPayload::from_static(b"lease gen 2"),
                update(&first),
            )
            .await
            .expect("the applied update is confirmed");
        assert_ne!(second.e_tag, first.e_tag);
        let stale = store
            .put_opts(
                &path,
                PutPayload::from_static(b"lease gen 2 by b"),
                update(&first),
            )
            .await;
        assert!(
            matches!(stale, Err(object_store::Error::Precondition { .. })),
            "{stale:?}"
        );
        let held = store.get(&path).await.unwrap().bytes().await.unwrap();
        assert_eq!(&held[..], b"lease gen 2");
    }

    #[tokio::test]
    async fn a_timeout_after_the_write_landed_is_a_success_and_before_it_an_error() {
        let path = Path::from("_ferry/schedules/nightly/lease");
        let landed = faulty(Fault::TimedOut { landed: true });
        landed
            .put_opts(&path, PutPayload::from_static(b"holder a"), create())
            .await
            .expect("the write is there: the timeout lost only its reply");
        let lost = faulty(Fault::TimedOut { landed: false });
        let err = lost
            .put_opts(&path, PutPayload::from_static(b"holder a"), create())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    #[tokio::test]
    async fn a_create_refused_with_nothing_stored_is_not_taken_as_a_duplicate() {
        let store = faulty(Fault::Conflict);
        let err = store
            .put_opts(
                &Path::from("_ferry/inbox/billing/evt_1.json"),
                PutPayload::from_static(b"{}"),
                create(),
            )
            .await
            .unwrap_err();
        assert!(
            !matches!(err, object_store::Error::AlreadyExists { .. }),
            "a webhook would be acknowledged as a duplicate: {err:?}"
        );
        assert!(
            err.to_string().contains("running again may succeed"),
            "{err}"
        );
    }

    #[test]
    fn payload_comparison_spans_chunks() {
        let sent = PutPayload::from_iter([Bytes::from_static(b"ab"), Bytes::from_static(b"cd")]);
        assert!(same(&Bytes::from_static(b"abcd"), &sent));
        assert!(!same(&Bytes::from_static(b"abce"), &sent));
        assert!(!same(&Bytes::from_static(b"abc"), &sent));
        assert!(!same(&Bytes::from_static(b"abcde"), &sent));
    }
}
