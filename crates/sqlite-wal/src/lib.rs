//! A SQLite VFS that writes a commit's WAL frames to the file in one write.
//!
//! SQLite appends a commit to the WAL one frame at a time, each frame in two writes (its
//! 24-byte header, then its page): about 70 `pwrite` calls for a commit of 35 pages,
//! each a system call with its own inode lock and time stamp update. The VFS registered
//! here is SQLite's default one with another `xOpen`: a WAL file opened through it keeps
//! contiguous writes in a buffer and hands them to the default VFS as one write before
//! anything else happens to the file — a sync, a read, a truncation, a size query, a
//! file control, a write elsewhere in it, its close — or once the buffer holds `LIMIT`
//! bytes. Every other file (the database, temporary files) is the default VFS's own.
//!
//! The order of the writes, and so what a crash or a power cut can leave in the file,
//! is the same as without the buffer: a write reaches the file before anything that
//! could observe it or depend on it. What changes is when: a commit's frames are
//! written at its sync instead of as they are produced. That is safe only where every
//! commit syncs the WAL before publishing itself in the WAL index (the shared memory
//! through which other connections find its frames), that is with
//! `PRAGMA synchronous = FULL` (or `EXTRA`). With `NORMAL` a commit is published
//! without a sync, while its frames could still be in this buffer, out of other
//! connections' sight: **open a connection through this VFS only if it will never
//! write with `synchronous` below `FULL`.** Connections that only read, or open the
//! same database through the default VFS, are unaffected.
//!
//! ```no_run
//! let vfs = ringfence_sqlite_wal::register()?;
//! let conn = rusqlite::Connection::open_with_flags_and_vfs(
//!     "data.db",
//!     rusqlite::OpenFlags::default(),
//!     vfs,
//! )?;
//! conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the VFS is registered under (not as the default).
pub const NAME: &CStr = c"ringfence-wal";

/// The most a WAL file holds back, in bytes: the most the default (unix) VFS writes in
/// one call (`seekAndWriteFd` masks a length to 17 bits), 31 frames of 4 KiB pages. A
/// larger commit is written in several parts.
pub const LIMIT: usize = 0x1ffff;

static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
/// The default VFS at registration, which does the work.
static DEFAULT: AtomicPtr<ffi::sqlite3_vfs> = AtomicPtr::new(ptr::null_mut());

/// Registers the VFS on first use (later calls only return its name), for
/// `Connection::open_with_flags_and_vfs`.
pub fn register() -> Result<&'static CStr, String> {
    REGISTERED
        // SAFETY: runs once per process; see `register_once`.
        .get_or_init(|| unsafe { register_once() })
        .clone()
        .map(|()| NAME)
}

/// # Safety
/// Reads the default VFS, which SQLite keeps for the life of the process, and leaks
/// the copy it registers, as SQLite requires of a registered VFS.
unsafe fn register_once() -> Result<(), String> {
    // SAFETY: initialises SQLite if needed; a null name asks for the default VFS.
    let default = unsafe { ffi::sqlite3_vfs_find(ptr::null()) };
    if default.is_null() {
        return Err("SQLite has no default VFS".into());
    }
    DEFAULT.store(default, Ordering::Release);
    // Everything but opening a file is the default VFS's: its other methods read
    // nothing of the VFS they are given beyond the fields copied here.
    // SAFETY: `default` points to a live, initialised sqlite3_vfs.
    let mut vfs: ffi::sqlite3_vfs = unsafe { ptr::read(default) };
    vfs.szOsFile = c_int::try_from(size_of::<WalFile>())
        .ok()
        .and_then(|own| own.checked_add(vfs.szOsFile))
        .ok_or("SQLite's file object is too large")?;
    vfs.pNext = ptr::null_mut();
    vfs.zName = NAME.as_ptr();
    vfs.xOpen = Some(open);
    // SAFETY: the VFS lives for the rest of the process.
    match unsafe { ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0) } {
        ffi::SQLITE_OK => Ok(()),
        rc => Err(format!("registering the WAL VFS failed (SQLite code {rc})")),
    }
}

/// Whether `conn`'s main database was opened through this VFS.
pub fn opened_through(conn: &rusqlite::Connection) -> bool {
    let mut vfs: *mut ffi::sqlite3_vfs = ptr::null_mut();
    // SAFETY: the handle is live while `conn` is borrowed; SQLITE_FCNTL_VFS_POINTER
    // writes the pointer of the VFS that opened the main database's file.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_VFS_POINTER,
            (&raw mut vfs).cast::<c_void>(),
        )
    };
    // SAFETY: a registered VFS and its name live as long as the process.
    rc == ffi::SQLITE_OK && !vfs.is_null() && unsafe { CStr::from_ptr((*vfs).zName) } == NAME
}

thread_local! {
    static WRITES: Cell<Writes> = const { Cell::new(Writes { received: 0, issued: 0 }) };
}

/// WAL writes made on the calling thread through this VFS since it started: how many
/// SQLite asked for, and how many reached the default VFS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Writes {
    pub received: u64,
    pub issued: u64,
}

/// The WAL writes of the calling thread so far (SQLite calls a VFS on the thread that
/// uses the connection).
pub fn writes_on_this_thread() -> Writes {
    WRITES.with(Cell::get)
}

fn count(received: u64, issued: u64) {
    WRITES.with(|w| {
        let Writes {
            received: r,
            issued: i,
        } = w.get();
        w.set(Writes {
            received: r + received,
            issued: i + issued,
        });
    });
}

/// A WAL file: SQLite sees `base`; the default VFS's file lives right after this
/// struct, in the memory SQLite allocated for both (`szOsFile`).
#[repr(C)]
struct WalFile {
    base: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Bytes SQLite wrote that are not in the file yet, from offset `at`.
    held: Vec<u8>,
    at: i64,
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    // Version 1: shared memory and memory mapping belong to the database file, never
    // to its WAL.
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let default = DEFAULT.load(Ordering::Acquire);
    // SAFETY: set before the VFS was registered; SQLite keeps it alive.
    let Some(default_open) = (unsafe { (*default).xOpen }) else {
        return ffi::SQLITE_CANTOPEN;
    };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // SAFETY: SQLite's own arguments, `file` at least as large as the default needs.
        return unsafe { default_open(default, name, file, flags, out_flags) };
    }
    // SAFETY: `file` has szOsFile bytes: a WalFile, then the default VFS's file (a
    // WalFile's size is a multiple of its 8-byte alignment, which suffices for it).
    let real = unsafe { file.cast::<u8>().add(size_of::<WalFile>()) }.cast::<ffi::sqlite3_file>();
    // SAFETY: as above; the default VFS sets its methods when it opens the file.
    let rc = unsafe {
        (*real).pMethods = ptr::null();
        default_open(default, name, real, flags, out_flags)
    };
    if rc != ffi::SQLITE_OK {
        // SAFETY: a file the default VFS set up despite failing must still be closed:
        // SQLite will not close this one, whose methods stay unset.
        unsafe {
            if let Some(close) = (*real).pMethods.as_ref().and_then(|m| m.xClose) {
                close(real);
            }
            (*file).pMethods = ptr::null();
        }
        return rc;
    }
    // SAFETY: `file` is ours to initialise; `close` drops it.
    unsafe {
        ptr::write(
            file.cast::<WalFile>(),
            WalFile {
                base: ffi::sqlite3_file {
                    pMethods: &WAL_METHODS,
                },
                real,
                held: Vec::new(),
                at: 0,
            },
        );
    }
    ffi::SQLITE_OK
}

/// # Safety
/// `file` is a WAL file `open` set up that SQLite has not closed yet; SQLite uses a
/// file from one thread at a time.
unsafe fn wal<'a>(file: *mut ffi::sqlite3_file) -> &'a mut WalFile {
    // SAFETY: see above.
    unsafe { &mut *file.cast::<WalFile>() }
}

/// Calls the default VFS's method `$m` on the real file of the WalFile `$w`.
macro_rules! real {
    ($w:expr, $m:ident $(, $arg:expr)*) => {{
        let real = $w.real;
        // SAFETY: the default VFS opened `real` and it stays open until `close`.
        match unsafe { (*(*real).pMethods).$m } {
            Some(f) => unsafe { f(real $(, $arg)*) },
            None => ffi::SQLITE_IOERR,
        }
    }};
}

/// Writes what the file holds back, if anything.
fn flush(w: &mut WalFile) -> c_int {
    if w.held.is_empty() {
        return ffi::SQLITE_OK;
    }
    // At most LIMIT bytes: the length fits.
    let len = w.held.len() as c_int;
    let rc = real!(w, xWrite, w.held.as_ptr().cast::<c_void>(), len, w.at);
    count(0, 1);
    w.held.clear();
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: called by SQLite on a file `open` set up.
    let w = unsafe { wal(file) };
    let Ok(len) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    count(1, 0);
    if len == 0 {
        return ffi::SQLITE_OK;
    }
    let follows = !w.held.is_empty() && offset == w.at + w.held.len() as i64;
    if !follows || w.held.len() + len > LIMIT {
        let rc = flush(w);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if len > LIMIT {
        count(0, 1);
        return real!(w, xWrite, data, amount, offset);
    }
    if w.held.is_empty() {
        w.at = offset;
    }
    // SAFETY: SQLite passes `amount` readable bytes at `data`.
    w.held
        .extend_from_slice(unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) });
    ffi::SQLITE_OK
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: called by SQLite, once, on a file `open` set up.
    let w = unsafe { wal(file) };
    let flushed = flush(w);
    let closed = real!(w, xClose);
    // SAFETY: the file is closed; nothing uses its buffer again.
    unsafe {
        ptr::drop_in_place(&mut w.held);
        (*file).pMethods = ptr::null();
    }
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

/// The method bodies that first write what is held back, then do their work.
macro_rules! after_flush {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) => $m:ident;)*) => {$(
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: called by SQLite on a file `open` set up.
            let w = unsafe { wal(file) };
            match flush(w) {
                ffi::SQLITE_OK => real!(w, $m $(, $arg)*),
                rc => rc,
            }
        }
    )*};
}

after_flush! {
    fn read(data: *mut c_void, amount: c_int, offset: i64) => xRead;
    fn truncate(size: i64) => xTruncate;
    fn sync(flags: c_int) => xSync;
    fn file_size(size: *mut i64) => xFileSize;
    fn file_control(op: c_int, arg: *mut c_void) => xFileControl;
}

/// The method bodies that only pass the call on.
macro_rules! passed_on {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) => $m:ident;)*) => {$(
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: called by SQLite on a file `open` set up.
            real!(unsafe { wal(file) }, $m $(, $arg)*)
        }
    )*};
}

passed_on! {
    fn lock(level: c_int) => xLock;
    fn unlock(level: c_int) => xUnlock;
    fn check_reserved_lock(out: *mut c_int) => xCheckReservedLock;
}

// Not error codes: without the method, SQLite's own defaults.
unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: called by SQLite on a file `open` set up, whose real file stays open.
    let real = unsafe { wal(file) }.real;
    match unsafe { (*(*real).pMethods).xSectorSize } {
        Some(f) => unsafe { f(real) },
        None => 4096,
    }
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: as for `sector_size`.
    let real = unsafe { wal(file) }.real;
    match unsafe { (*(*real).pMethods).xDeviceCharacteristics } {
        Some(f) => unsafe { f(real) },
        None => 0,
    }
}
