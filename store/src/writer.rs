//! The write path: the request path hands a record to a bounded queue without
//! waiting; one background task writes batches to the store, spools them when the
//! store is down or slow, and replays the spool in order once it answers.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::spool::Spool;
use crate::{SpoolError, UsageRecord, UsageStore, WriterError};

/// How the writer batches, waits and spools.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// Records the in-memory queue holds.
    pub queue_capacity: usize,
    /// Records per insert, at most.
    pub batch_size: usize,
    /// How long the first record of a batch waits for more before the batch is written.
    pub batch_interval: Duration,
    /// An insert slower than this counts as failed: its batch goes to the spool.
    pub store_timeout: Duration,
    /// Pause between attempts to replay the spool while the store fails.
    pub retry_interval: Duration,
    /// The spool's folder.
    pub spool_dir: PathBuf,
    /// Bound of the spool, in bytes.
    pub spool_max_bytes: u64,
    /// Size at which a spool segment is rotated, in bytes.
    pub spool_segment_bytes: u64,
    /// How often the writer runs [`UsageStore::maintain`] (partitions ahead,
    /// retention); the first run is at start. `None`: never (another process,
    /// such as a sibling replica, does it).
    pub maintain_interval: Option<Duration>,
}

impl WriterConfig {
    /// Defaults with the spool in `spool_dir`: a 64k-record queue, batches of up to
    /// 1,000 records or 200 ms, a 5 s store timeout, 1 s between retries, a
    /// 1 GiB spool in 16 MiB segments, and maintenance hourly.
    pub fn new(spool_dir: impl Into<PathBuf>) -> WriterConfig {
        WriterConfig {
            queue_capacity: 65_536,
            batch_size: 1_000,
            batch_interval: Duration::from_millis(200),
            store_timeout: Duration::from_secs(5),
            retry_interval: Duration::from_secs(1),
            spool_dir: spool_dir.into(),
            spool_max_bytes: 1 << 30,
            spool_segment_bytes: 16 << 20,
            maintain_interval: Some(Duration::from_secs(3600)),
        }
    }
}

/// State the writer task shares with the handles.
#[derive(Debug, Default)]
struct Shared {
    spool_bytes: AtomicU64,
    /// Set when the spool refused a batch for lack of room; cleared once it drains.
    spool_full: AtomicBool,
    /// Records the store acknowledged (new or already there).
    stored: AtomicU64,
    /// Records written to the spool (replays do not count again).
    spooled: AtomicU64,
    close: Notify,
    /// Records the batch being gathered still lacks.
    wanted: AtomicUsize,
    /// Told when the queue holds the records the batch lacks, so that the
    /// writer, gathering a batch, need not wake for every record.
    batch_ready: Notify,
}

/// The request path's side of the writer. Cheap to clone; never blocks.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    tx: mpsc::Sender<UsageRecord>,
    shared: Arc<Shared>,
}

impl WriterHandle {
    /// Queues a record, or gives it back when the queue is full or closed (the
    /// caller decides: refuse the request, or serve it unmetered and say so).
    pub fn try_record(&self, record: UsageRecord) -> Result<(), Box<UsageRecord>> {
        self.tx.try_send(record).map_err(|e| Box::new(e.into_inner()))?;
        if self.queue_depth() >= self.shared.wanted.load(Ordering::SeqCst) {
            self.shared.batch_ready.notify_one();
        }
        Ok(())
    }

    /// Records waiting in the queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Bytes in the spool (records waiting for the store to come back).
    pub fn spool_bytes(&self) -> u64 {
        self.shared.spool_bytes.load(Ordering::Relaxed)
    }

    /// Records the store has acknowledged since start.
    pub fn stored(&self) -> u64 {
        self.shared.stored.load(Ordering::Relaxed)
    }

    /// Records written to the spool since start, to be replayed once the store
    /// answers: with [`WriterHandle::stored`], how many records are safe on disk.
    pub fn spooled(&self) -> u64 {
        self.shared.spooled.load(Ordering::Relaxed)
    }

    /// Both the queue and the spool are at their bound: a new record could not be
    /// kept, so the gateway should refuse requests (503) rather than serve them unmetered.
    pub fn is_full(&self) -> bool {
        self.tx.capacity() == 0 && self.shared.spool_full.load(Ordering::Relaxed)
    }
}

/// The batch writer: owns the background task.
#[derive(Debug)]
pub struct Writer {
    handle: WriterHandle,
    task: JoinHandle<Result<(), WriterError>>,
}

impl Writer {
    /// Opens the spool (replaying what a previous process left there once the store
    /// answers) and starts the writer task on the current runtime, for a store
    /// already migrated.
    pub fn start<S: UsageStore + 'static>(store: S, config: WriterConfig) -> Result<Writer, WriterError> {
        Writer::spawn(store, config, true)
    }

    /// Like [`Writer::start`] for a store that could not be migrated yet (it was
    /// unreachable at start-up): records are spooled until a migration succeeds,
    /// tried before each insert.
    pub fn start_unmigrated<S: UsageStore + 'static>(store: S, config: WriterConfig) -> Result<Writer, WriterError> {
        Writer::spawn(store, config, false)
    }

    fn spawn<S: UsageStore + 'static>(store: S, config: WriterConfig, migrated: bool) -> Result<Writer, WriterError> {
        let spool = Spool::open(&config.spool_dir, config.spool_max_bytes, config.spool_segment_bytes)?;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let shared = Arc::new(Shared { wanted: AtomicUsize::new(config.batch_size.max(1)), ..Shared::default() });
        shared.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
        let retry_at = (!spool.is_empty()).then(Instant::now);
        let maintain_at = config.maintain_interval.map(|_| Instant::now());
        let task = Task {
            store,
            config,
            rx,
            spool: Some(spool),
            shared: shared.clone(),
            pending: None,
            retry_at,
            maintain_at,
            migrated,
        };
        Ok(Writer { handle: WriterHandle { tx, shared }, task: tokio::spawn(task.run()) })
    }

    /// A handle for the request path.
    pub fn handle(&self) -> WriterHandle {
        self.handle.clone()
    }

    /// Stops taking records, then writes or spools everything queued (for SIGTERM).
    /// Does not wait for an unreachable store: what it cannot write is spooled and
    /// replayed by the next process.
    pub async fn flush_and_close(self) -> Result<(), WriterError> {
        self.handle.shared.close.notify_one();
        self.task.await.map_err(|e| WriterError::Task(e.to_string()))?
    }
}

enum Next {
    Batch(Vec<UsageRecord>),
    Retry,
    Maintain,
    Close,
}

/// How long maintenance may take (dropping a partition waits for its locks).
const MAINTAIN_TIMEOUT: Duration = Duration::from_secs(60);
/// When maintenance failed, the pause before it is tried again.
const MAINTAIN_RETRY: Duration = Duration::from_secs(60);

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Task<S> {
    store: S,
    config: WriterConfig,
    rx: mpsc::Receiver<UsageRecord>,
    /// `None` only while a blocking spool operation holds it.
    spool: Option<Spool>,
    shared: Arc<Shared>,
    /// A batch that could be neither stored nor spooled; while it waits, the queue
    /// is not read, so it fills and [`WriterHandle::is_full`] tells the gateway.
    pending: Option<Vec<UsageRecord>>,
    /// When to try the store again (spool replay or the pending batch).
    retry_at: Option<Instant>,
    /// When to run the store's maintenance next.
    maintain_at: Option<Instant>,
    /// The store's schema is current; until then nothing is inserted.
    migrated: bool,
}

impl<S: UsageStore> Task<S> {
    async fn run(mut self) -> Result<(), WriterError> {
        loop {
            match self.next().await {
                Next::Batch(batch) => self.write(batch).await?,
                Next::Retry => self.retry().await?,
                Next::Maintain => self.maintain().await,
                Next::Close => return self.close().await,
            }
        }
    }

    async fn next(&mut self) -> Next {
        let (retry, maintain) = (until(self.retry_at), until(self.maintain_at));
        if self.pending.is_some() {
            return tokio::select! {
                () = self.shared.close.notified() => Next::Close,
                () = retry => Next::Retry,
                () = maintain => Next::Maintain,
            };
        }
        let first = tokio::select! {
            () = self.shared.close.notified() => return Next::Close,
            () = retry => return Next::Retry,
            () = maintain => return Next::Maintain,
            first = self.rx.recv() => first,
        };
        let Some(first) = first else { return Next::Close };
        let mut batch = Vec::with_capacity(self.config.batch_size.min(1024));
        batch.push(first);
        let deadline = Instant::now() + self.config.batch_interval;
        // Take what is queued; then sleep until the interval ends or the
        // queue holds a full batch, rather than wake for each record.
        while self.take_queued(&mut batch) {
            let wanted = self.config.batch_size - batch.len();
            self.shared.wanted.store(wanted, Ordering::SeqCst);
            // Records queued before the store above were measured against
            // the previous want.
            if self.rx.len() >= wanted {
                continue;
            }
            tokio::select! {
                () = self.shared.batch_ready.notified() => {}
                () = tokio::time::sleep_until(deadline) => {
                    self.take_queued(&mut batch);
                    break;
                }
                () = self.shared.close.notified() => {
                    // Keep the close request for the next round, after this batch.
                    self.shared.close.notify_one();
                    break;
                }
            }
        }
        Next::Batch(batch)
    }

    /// Moves queued records into `batch` up to the batch size; true when the
    /// batch has room left and the queue is open (more records may come).
    fn take_queued(&mut self, batch: &mut Vec<UsageRecord>) -> bool {
        while batch.len() < self.config.batch_size {
            match self.rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
        false
    }

    /// Creates partitions ahead and applies retention; a failure is logged and
    /// tried again later, never fatal (records keep flowing meanwhile).
    async fn maintain(&mut self) {
        let Some(interval) = self.config.maintain_interval else { return };
        let next = match tokio::time::timeout(MAINTAIN_TIMEOUT, self.store.maintain(crate::now_ms())).await {
            Ok(Ok(report)) => {
                tracing::info!(
                    partitions_created = report.partitions_created,
                    partitions_dropped = report.partitions_dropped,
                    rows_deleted = report.rows_deleted,
                    "usage store maintenance done"
                );
                interval
            }
            Ok(Err(err)) => {
                tracing::warn!(category = err.category(), %err, "usage store maintenance failed; trying again later");
                MAINTAIN_RETRY.min(interval)
            }
            Err(_) => {
                tracing::warn!(timeout = ?MAINTAIN_TIMEOUT, "usage store maintenance timed out; trying again later");
                MAINTAIN_RETRY.min(interval)
            }
        };
        self.maintain_at = Some(Instant::now() + next);
    }

    fn spool_is_empty(&self) -> bool {
        self.spool.as_ref().is_none_or(Spool::is_empty)
    }

    /// Stores a batch, or spools it when the store fails. Behind a spool backlog a
    /// batch joins the spool, so records reach the store in the order they came.
    async fn write(&mut self, batch: Vec<UsageRecord>) -> Result<(), WriterError> {
        if self.spool_is_empty() && self.insert(&batch).await {
            return Ok(());
        }
        self.spool_or_hold(batch).await
    }

    /// Migrates the store if that is still to do; false (and a retry scheduled)
    /// when it fails.
    async fn migrate(&mut self) -> bool {
        if self.migrated {
            return true;
        }
        match tokio::time::timeout(self.config.store_timeout, self.store.migrate()).await {
            Ok(Ok(())) => {
                tracing::info!("usage store migrated; records flow to it");
                self.migrated = true;
                return true;
            }
            Ok(Err(err)) => tracing::warn!(category = err.category(), %err, "usage store migration failed; spooling"),
            Err(_) => tracing::warn!(timeout = ?self.config.store_timeout, "usage store migration timed out; spooling"),
        }
        self.retry_at = Some(Instant::now() + self.config.retry_interval);
        false
    }

    /// Inserts within the store timeout; false (and a retry scheduled) on failure.
    async fn insert(&mut self, batch: &[UsageRecord]) -> bool {
        if !self.migrate().await {
            return false;
        }
        match tokio::time::timeout(self.config.store_timeout, self.store.insert_batch(batch)).await {
            Ok(Ok(_)) => {
                self.shared.stored.fetch_add(batch.len() as u64, Ordering::Relaxed);
                true
            }
            Ok(Err(err)) => {
                tracing::warn!(records = batch.len(), category = err.category(), %err, "usage store insert failed; spooling");
                self.retry_at = Some(Instant::now() + self.config.retry_interval);
                false
            }
            Err(_) => {
                tracing::warn!(records = batch.len(), timeout = ?self.config.store_timeout,
                    "usage store insert timed out; spooling");
                self.retry_at = Some(Instant::now() + self.config.retry_interval);
                false
            }
        }
    }

    async fn spool_or_hold(&mut self, batch: Vec<UsageRecord>) -> Result<(), WriterError> {
        let len = batch.len();
        let (batch, result) = self
            .with_spool(move |spool| {
                let r = spool.append(&batch);
                (batch, r)
            })
            .await?;
        match result {
            Ok(()) => {
                self.shared.spooled.fetch_add(len as u64, Ordering::Relaxed);
                self.retry_at.get_or_insert_with(|| Instant::now() + self.config.retry_interval);
                Ok(())
            }
            Err(SpoolError::Full { bytes, max }) => {
                if !self.shared.spool_full.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        bytes,
                        max,
                        "usage spool is full; holding records in memory until the store answers"
                    );
                }
                self.pending = Some(batch);
                self.retry_at.get_or_insert_with(|| Instant::now() + self.config.retry_interval);
                Ok(())
            }
            Err(err) => {
                // The disk failed under the spool: keep the batch and try again later
                // rather than lose it.
                tracing::error!(%err, "usage spool write failed");
                self.shared.spool_full.store(true, Ordering::Relaxed);
                self.pending = Some(batch);
                self.retry_at = Some(Instant::now() + self.config.retry_interval);
                Ok(())
            }
        }
    }

    /// Replays the spool oldest first until it is empty or the store fails, then
    /// the held batch.
    async fn retry(&mut self) -> Result<(), WriterError> {
        self.retry_at = None;
        while !self.spool_is_empty() {
            let max = self.config.batch_size.max(1);
            let (records, position) = self.with_spool(move |spool| spool.read(max)).await??;
            if !records.is_empty() && !self.insert(&records).await {
                return Ok(());
            }
            self.with_spool(move |spool| spool.consume(position)).await??;
        }
        if self.shared.spool_full.swap(false, Ordering::Relaxed) {
            tracing::info!("usage spool drained; the store answers again");
        }
        if let Some(batch) = self.pending.take() {
            self.write(batch).await?;
        }
        Ok(())
    }

    /// Runs a spool operation on the blocking pool (it fsyncs), keeping the runtime
    /// thread free for requests.
    async fn with_spool<T: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut Spool) -> T + Send + 'static,
    ) -> Result<T, WriterError> {
        let mut spool =
            self.spool.take().ok_or_else(|| WriterError::Task("spool lost by a failed operation".into()))?;
        let (spool, out) = tokio::task::spawn_blocking(move || {
            let out = op(&mut spool);
            (spool, out)
        })
        .await
        .map_err(|e| WriterError::Task(e.to_string()))?;
        self.shared.spool_bytes.store(spool.bytes(), Ordering::Relaxed);
        self.spool = Some(spool);
        Ok(out)
    }

    /// Writes (or spools) the held batch and everything queued, without waiting for
    /// a failing store.
    async fn close(mut self) -> Result<(), WriterError> {
        self.rx.close();
        let mut rest = self.pending.take().unwrap_or_default();
        while let Some(r) = self.rx.recv().await {
            rest.push(r);
        }
        let mut lost = 0;
        for batch in rest.chunks(self.config.batch_size.max(1)) {
            let batch = batch.to_vec();
            if self.spool_is_empty() && self.insert(&batch).await {
                continue;
            }
            let len = batch.len();
            let (_, result) = self
                .with_spool(move |spool| {
                    let r = spool.append(&batch);
                    (batch, r)
                })
                .await?;
            match result {
                Ok(()) => {
                    self.shared.spooled.fetch_add(len as u64, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::error!(%err, records = len, "usage records lost at shutdown");
                    lost += len;
                }
            }
        }
        if lost > 0 { Err(WriterError::Lost { lost }) } else { Ok(()) }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::query::{GroupBy, RecordFilter, RecordPage, Scope, ScopeUsage, SummaryRow, UsageFilter};
    use crate::record::tests::sample;
    use crate::{MaintainReport, StoreError};
    use std::sync::Mutex;

    /// An in-memory store that logs batch sizes, or fails while `down`.
    #[derive(Clone, Default)]
    struct Fake {
        batches: Arc<Mutex<Vec<usize>>>,
        down: Arc<AtomicBool>,
        maintained: Arc<AtomicU64>,
    }

    impl Fake {
        fn batches(&self) -> Vec<usize> {
            self.batches.lock().map(|b| b.clone()).unwrap_or_default()
        }
    }

    impl UsageStore for Fake {
        async fn migrate(&self) -> Result<(), StoreError> {
            Ok(())
        }
        async fn maintain(&self, _: i64) -> Result<MaintainReport, StoreError> {
            self.maintained.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
            }
            Ok(MaintainReport::default())
        }
        async fn insert_batch(&self, records: &[UsageRecord]) -> Result<u64, StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Database(sqlx::Error::PoolTimedOut));
            }
            self.batches.lock().map(|mut b| b.push(records.len())).unwrap_or_default();
            Ok(records.len() as u64)
        }
        async fn records(&self, _: &RecordFilter, _: Option<&str>, _: u32) -> Result<RecordPage, StoreError> {
            Ok(RecordPage::default())
        }
        async fn summary(&self, _: &UsageFilter, _: &[GroupBy]) -> Result<Vec<SummaryRow>, StoreError> {
            Ok(Vec::new())
        }
        async fn totals(&self, _: &UsageFilter, _: &[GroupBy]) -> Result<Vec<SummaryRow>, StoreError> {
            Ok(Vec::new())
        }
        async fn usage(&self, _: &Scope, _: i64) -> Result<ScopeUsage, StoreError> {
            Ok(ScopeUsage::default())
        }
        async fn bodies(&self, _: &str) -> Result<Option<crate::Bodies>, StoreError> {
            Ok(None)
        }
    }

    fn record(i: usize) -> UsageRecord {
        UsageRecord { request_id: format!("r{i}"), ..sample() }
    }

    /// Lets the writer task run until it waits on time again.
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batches_are_cut_by_size_or_by_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Fake::default();
        let config = WriterConfig {
            batch_size: 10,
            batch_interval: Duration::from_millis(100),
            ..WriterConfig::new(dir.path())
        };
        let writer = Writer::start(store.clone(), config).unwrap();
        let handle = writer.handle();
        for i in 0..3 {
            handle.try_record(record(i)).unwrap();
        }
        settle().await;
        tokio::time::advance(Duration::from_millis(99)).await;
        settle().await;
        assert_eq!(store.batches(), Vec::<usize>::new(), "a partial batch waits for the interval");
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(store.batches(), vec![3]);
        for i in 3..28 {
            handle.try_record(record(i)).unwrap();
        }
        settle().await;
        assert_eq!(store.batches(), vec![3, 10, 10], "full batches go at once");
        writer.flush_and_close().await.unwrap();
        assert_eq!(store.batches(), vec![3, 10, 10, 5], "closing flushes the rest");
        assert_eq!(handle.stored(), 28);
        assert!(handle.try_record(record(99)).is_err(), "closed");
    }

    #[tokio::test(start_paused = true)]
    async fn maintenance_runs_at_start_then_each_interval_and_sooner_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = Fake::default();
        let config =
            WriterConfig { maintain_interval: Some(Duration::from_secs(3600)), ..WriterConfig::new(dir.path()) };
        let writer = Writer::start(store.clone(), config).unwrap();
        let runs = || store.maintained.load(Ordering::SeqCst);
        settle().await;
        assert_eq!(runs(), 1, "at start");
        tokio::time::advance(Duration::from_secs(3599)).await;
        settle().await;
        assert_eq!(runs(), 1, "not before the interval");
        store.down.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(1)).await;
        settle().await;
        assert_eq!(runs(), 2, "each interval");
        tokio::time::advance(MAINTAIN_RETRY).await;
        settle().await;
        assert_eq!(runs(), 3, "a failed run is tried again before the next interval");
        writer.flush_and_close().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn full_when_queue_and_spool_are_both_at_their_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = Fake::default();
        store.down.store(true, Ordering::SeqCst);
        let config = WriterConfig {
            queue_capacity: 4,
            batch_size: 2,
            batch_interval: Duration::from_millis(10),
            retry_interval: Duration::from_millis(50),
            spool_max_bytes: 2_000, // room for two records or so
            ..WriterConfig::new(dir.path())
        };
        let writer = Writer::start(store.clone(), config).unwrap();
        let handle = writer.handle();
        let mut sent = 0;
        while !handle.is_full() {
            if handle.try_record(record(sent)).is_ok() {
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert!(sent < 100, "the writer never reported full");
        }
        assert!(handle.spool_bytes() > 0);
        assert!(handle.try_record(record(1000)).is_err(), "a full writer refuses");
        // The store returns: spool, held batch and queue drain, in order, none lost.
        store.down.store(false, Ordering::SeqCst);
        while handle.stored() < sent as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!handle.is_full());
        assert_eq!(handle.spool_bytes(), 0);
        writer.flush_and_close().await.unwrap();
        assert_eq!(store.batches().iter().sum::<usize>(), sent);
    }
}
