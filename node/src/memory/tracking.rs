//! A global allocator over mimalloc that counts live heap bytes, in total and
//! per [`Account`] (one per actor).
//!
//! Each allocation carries a small header naming the account that made it,
//! so a free is charged back to that account whichever thread frees it: a
//! batch built by a scanner and freed by a sorter leaves neither account
//! skewed. The account of an allocation is the thread's current account:
//! actors set theirs while handling a message ([`Attributed`] re-enters it on
//! every poll, so `.await` points and thread hops inside a handler stay
//! attributed); anything else lands in [`Account::UNATTRIBUTED`].
//!
//! Counters are striped by thread: one shared atomic per allocation costs
//! ~40 ns under contention (DEPENDENCIES.md), a thread's own cache line a
//! few. Readers fold the stripes.
//!
//! RocksDB's C++ allocations do not pass through here; the store reports
//! them from its cache and WriteBufferManager.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};

use mimalloc::MiMalloc;

/// Accounts that can be named, including [`Account::UNATTRIBUTED`]; names
/// past the limit share [`Account::OTHER`].
pub const MAX_ACCOUNTS: usize = 64;
/// Counter stripes; threads beyond this many share stripes (still exact,
/// only slower).
const STRIPES: usize = 32;
/// Header in front of every allocation (more when the alignment is larger),
/// holding the account id.
const HEADER_BYTES: usize = 16;

#[repr(align(128))]
struct Stripe {
    live: [AtomicI64; MAX_ACCOUNTS],
}

static COUNTERS: [Stripe; STRIPES] = [const {
    Stripe {
        live: [const { AtomicI64::new(0) }; MAX_ACCOUNTS],
    }
}; STRIPES];
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);
/// Names by account id. Registration happens at actor start, never inside
/// the allocator.
static NAMES: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    static CURRENT: Cell<u16> = const { Cell::new(0) };
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn charge(account: u16, bytes: isize) {
    let stripe = STRIPE.with(|stripe| {
        let mut index = stripe.get();
        if index == usize::MAX {
            index = NEXT_STRIPE.fetch_add(1, Relaxed) % STRIPES;
            stripe.set(index);
        }
        index
    });
    COUNTERS[stripe].live[usize::from(account)].fetch_add(bytes as i64, Relaxed);
}

/// The tracking allocator. Install it with [`install_tracking_allocator!`]
/// (crate root), which also configures mimalloc before the first allocation.
pub struct TrackingAllocator;

/// Makes [`TrackingAllocator`] the global allocator of the binary (or test
/// harness) it is expanded in, and applies
/// [`configure_allocators`](crate::memory::configure_allocators) from
/// `.init_array`: mimalloc's first arena is made, with the settings of its
/// time, when Rust's runtime first allocates, before `main`.
#[macro_export]
macro_rules! install_tracking_allocator {
    () => {
        $crate::install_allocator!(
            $crate::memory::TrackingAllocator = $crate::memory::TrackingAllocator
        );
    };
}

/// Plain mimalloc with the same settings and no accounting: only to
/// measure what tracking costs (`bench/allocator-overhead`). The governor
/// then sees no heap and applies no back-pressure.
#[macro_export]
macro_rules! install_untracked_allocator {
    () => {
        $crate::install_allocator!(
            $crate::memory::tracking::UntrackedAllocator =
                $crate::memory::tracking::UntrackedAllocator
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! install_allocator {
    ($allocator:ty = $value:expr) => {
        #[global_allocator]
        static GLOBAL: $allocator = $value;

        #[cfg(target_os = "linux")]
        #[used]
        #[unsafe(link_section = ".init_array")]
        static CONFIGURE_ALLOCATOR: extern "C" fn() = {
            extern "C" fn configure() {
                $crate::memory::configure_allocators();
            }
            configure
        };
    };
}

pub use mimalloc::MiMalloc as UntrackedAllocator;

impl TrackingAllocator {
    /// Whether this allocator is the process's global allocator (it has
    /// served an allocation). Without it every reading is zero.
    pub fn is_installed() -> bool {
        INSTALLED.load(Relaxed)
    }

    /// Frees this thread's empty mimalloc pages, including pages emptied by
    /// frees from other threads, which mimalloc otherwise reclaims only when
    /// this thread allocates again: an idle thread would keep them. mimalloc
    /// can collect only the calling thread's heap.
    pub fn collect_thread_heap(force: bool) {
        // SAFETY: mi_collect has no preconditions.
        unsafe { libmimalloc_sys::mi_collect(force) }
    }

    /// Memory mimalloc has committed from the OS: live heap plus what it
    /// keeps for reuse. Resident memory above this is not the heap's.
    pub fn committed_bytes() -> u64 {
        let mut commit = 0usize;
        let mut unused = [0usize; 7];
        let [elapsed, user, system, rss, peak_rss, peak_commit, faults] = &mut unused;
        // SAFETY: every pointer is to a live, writable usize.
        unsafe {
            libmimalloc_sys::mi_process_info(
                elapsed,
                user,
                system,
                rss,
                peak_rss,
                &mut commit,
                peak_commit,
                faults,
            )
        };
        commit as u64
    }

    /// mimalloc settings that keep resident memory close to live memory:
    /// return freed pages at once instead of after 1 s, no transparent huge
    /// pages (a 2 MiB page is resident for one live byte), and commit arena
    /// memory on use. Call before the first allocation (the `quern` binary
    /// does so from `.init_array`): the first arena is made with the
    /// settings of its time.
    pub(super) fn configure_for_bounded_memory() {
        for (option, value) in [(PURGE_DELAY, 0), (ALLOW_THP, 0), (ARENA_EAGER_COMMIT, 0)] {
            // SAFETY: setting an option is always allowed; an environment
            // variable (MIMALLOC_*) set by the user still takes precedence
            // because mi_option_set_default does not override it.
            unsafe { libmimalloc_sys::mi_option_set_default(option, value) }
        }
    }

    /// Keeps freed pages `millis` before returning them to the OS, unless
    /// the user set `MIMALLOC_PURGE_DELAY`. Takes effect at once.
    pub(super) fn set_purge_delay(millis: i64) {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: setting an option is always allowed.
            unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, millis as _) }
        }
    }

    /// How long freed pages are kept before they return to the OS.
    pub fn purge_delay_ms() -> i64 {
        // SAFETY: reading an option is always allowed.
        unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) as i64 }
    }
}

// Option numbers of mimalloc 3.x's `mi_option_e`; the Rust crate's
// constants are mimalloc 2's numbering.
const ARENA_EAGER_COMMIT: i32 = 4;
const PURGE_DELAY: i32 = 15;
const ALLOW_THP: i32 = 43;

fn header_offset(align: usize) -> usize {
    align.max(HEADER_BYTES)
}

/// The layout of the block mimalloc holds for a user layout, and the
/// header's size, or `None` on overflow.
fn outer(layout: Layout) -> Option<(Layout, usize)> {
    let offset = header_offset(layout.align());
    let size = layout.size().checked_add(offset)?;
    Some((Layout::from_size_align(size, layout.align()).ok()?, offset))
}

/// # Safety
/// `user` must point `HEADER_BYTES` or more into a block we allocated.
unsafe fn write_account(user: *mut u8, account: u16) {
    unsafe { user.sub(2).cast::<u16>().write_unaligned(account) }
}

/// # Safety
/// `user` must be a pointer this allocator returned.
unsafe fn read_account(user: *mut u8) -> u16 {
    unsafe { user.sub(2).cast::<u16>().read_unaligned() }
}

impl TrackingAllocator {
    /// # Safety
    /// As [`GlobalAlloc::alloc`]; `allocate` must return a block for the
    /// layout it is given, or null.
    unsafe fn alloc_with(
        &self,
        layout: Layout,
        allocate: impl FnOnce(Layout) -> *mut u8,
    ) -> *mut u8 {
        if !INSTALLED.load(Relaxed) {
            INSTALLED.store(true, Relaxed);
        }
        let Some((outer, offset)) = outer(layout) else {
            return std::ptr::null_mut();
        };
        let base = allocate(outer);
        if base.is_null() {
            return base;
        }
        let account = CURRENT.with(Cell::get);
        charge(account, outer.size() as isize);
        // SAFETY: the block is `offset` bytes longer than asked for.
        unsafe {
            let user = base.add(offset);
            write_account(user, account);
            user
        }
    }
}

// SAFETY: every block handed out is a mimalloc block for a layout with the
// same alignment, `offset` bytes larger, offset by a multiple of the
// alignment; frees and reallocs undo exactly that.
unsafe impl GlobalAlloc for TrackingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { self.alloc_with(layout, |outer| MiMalloc.alloc(outer)) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { self.alloc_with(layout, |outer| MiMalloc.alloc_zeroed(outer)) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // The layout was accepted by `alloc`, so `outer` succeeds.
        let Some((outer, offset)) = outer(layout) else {
            return;
        };
        unsafe {
            charge(read_account(ptr), -(outer.size() as isize));
            MiMalloc.dealloc(ptr.sub(offset), outer);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some((old_outer, offset)) = outer(layout) else {
            return std::ptr::null_mut();
        };
        let Some(new_outer) = new_size.checked_add(offset) else {
            return std::ptr::null_mut();
        };
        unsafe {
            let old_account = read_account(ptr);
            let base = MiMalloc.realloc(ptr.sub(offset), old_outer, new_outer);
            if base.is_null() {
                return base;
            }
            // Whoever grows a block owns it from now on.
            let account = CURRENT.with(Cell::get);
            charge(old_account, -(old_outer.size() as isize));
            charge(account, new_outer as isize);
            let user = base.add(offset);
            write_account(user, account);
            user
        }
    }
}

/// Who is charged for an allocation: an actor, or nobody in particular.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Account(u16);

impl Account {
    pub const UNATTRIBUTED: Account = Account(0);
    /// Shared by names registered after the table is full.
    pub const OTHER: Account = Account(MAX_ACCOUNTS as u16 - 1);

    /// The account called `name`, registered on first use. Names are reused
    /// across jobs (`scan-0` is always the same account), so the table does
    /// not grow with the number of jobs.
    pub fn named(name: &str) -> Account {
        let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        if names.is_empty() {
            names.push("unattributed".to_string());
        }
        if let Some(id) = names.iter().position(|n| n == name) {
            return Account(id as u16);
        }
        if names.len() >= MAX_ACCOUNTS - 1 {
            return Account::OTHER;
        }
        names.push(name.to_string());
        Account(names.len() as u16 - 1)
    }

    pub fn name(self) -> String {
        if self == Account::OTHER {
            return "other".to_string();
        }
        let names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        names
            .get(usize::from(self.0))
            .cloned()
            .unwrap_or_else(|| "unattributed".to_string())
    }

    /// The account this thread is charging now.
    pub fn current() -> Account {
        Account(CURRENT.with(Cell::get))
    }

    /// Runs `work` with this account charged for its allocations.
    pub fn enter<R>(self, work: impl FnOnce() -> R) -> R {
        let _restore = Restore(CURRENT.with(|c| c.replace(self.0)));
        work()
    }

    /// Wraps a future so every poll charges this account.
    pub fn attribute<F: Future>(self, future: F) -> Attributed<F> {
        Attributed {
            account: self,
            future,
        }
    }

    /// Live bytes allocated by this account and not yet freed.
    pub fn live_bytes(self) -> i64 {
        COUNTERS
            .iter()
            .map(|stripe| stripe.live[usize::from(self.0)].load(Relaxed))
            .sum()
    }
}

/// Puts the previous account back, even if the work panics.
struct Restore(u16);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// A future whose polls are charged to one account.
pub struct Attributed<F> {
    account: Account,
    future: F,
}

impl<F: Future> Future for Attributed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `future` is never moved out of the pinned wrapper.
        let this = unsafe { self.get_unchecked_mut() };
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        this.account.enter(|| future.poll(cx))
    }
}

/// Live bytes per account at one moment (stripes folded).
#[derive(Debug, Clone)]
pub struct Usage {
    live: [i64; MAX_ACCOUNTS],
}

impl Usage {
    pub fn read() -> Usage {
        let mut live = [0i64; MAX_ACCOUNTS];
        for stripe in &COUNTERS {
            for (sum, counter) in live.iter_mut().zip(&stripe.live) {
                *sum += counter.load(Relaxed);
            }
        }
        Usage { live }
    }

    /// Every live byte the allocator handed out, headers included.
    pub fn total(&self) -> u64 {
        self.live.iter().sum::<i64>().max(0) as u64
    }

    pub fn of(&self, account: Account) -> u64 {
        self.live[usize::from(account.0)].max(0) as u64
    }

    /// Registered accounts with their live bytes, unattributed first.
    pub fn accounts(&self) -> Vec<(Account, u64)> {
        let registered = NAMES.lock().map_or(1, |n| n.len()).max(1);
        (0..registered)
            .map(|id| Account(id as u16))
            .chain([Account::OTHER])
            .map(|account| (account, self.of(account)))
            .collect()
    }
}
