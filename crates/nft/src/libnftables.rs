//! libnftables, loaded at run time: the same command language as `nft -f`,
//! without a process per change.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

/// `NFT_CTX_OUTPUT_JSON` from nftables/libnftables.h.
const OUTPUT_JSON: c_uint = 1 << 4;

type NewFn = unsafe extern "C" fn(u32) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type BufferFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type GetBufferFn = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type RunFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;
type SetFlagsFn = unsafe extern "C" fn(*mut c_void, c_uint);

pub struct Libnftables {
    free: FreeFn,
    run: RunFn,
    output: GetBufferFn,
    error: GetBufferFn,
    /// Plain output, for transactions.
    ctx: *mut c_void,
    /// JSON output, for reading the table back.
    json: *mut c_void,
    // Dropped last: the function pointers above live in it.
    _library: libloading::Library,
}

// SAFETY: a libnftables context may be used from any thread, one at a time;
// `&mut self` on every call guarantees that.
unsafe impl Send for Libnftables {}

impl Libnftables {
    pub fn load() -> Result<Self, String> {
        // SAFETY: loading libnftables runs no initialisers beyond its own
        // and the symbols are used with the signatures its header declares.
        unsafe {
            let library = libloading::Library::new("libnftables.so.1")
                .map_err(|e| format!("cannot load libnftables.so.1: {e}"))?;
            let symbol = |name: &[u8]| -> Result<*mut c_void, String> {
                library.get::<*mut c_void>(name).map(|s| *s).map_err(|e| {
                    format!("libnftables lacks {}: {e}", String::from_utf8_lossy(name))
                })
            };
            let new: NewFn = std::mem::transmute(symbol(b"nft_ctx_new\0")?);
            let free: FreeFn = std::mem::transmute(symbol(b"nft_ctx_free\0")?);
            let buffer_output: BufferFn = std::mem::transmute(symbol(b"nft_ctx_buffer_output\0")?);
            let buffer_error: BufferFn = std::mem::transmute(symbol(b"nft_ctx_buffer_error\0")?);
            let output: GetBufferFn = std::mem::transmute(symbol(b"nft_ctx_get_output_buffer\0")?);
            let error: GetBufferFn = std::mem::transmute(symbol(b"nft_ctx_get_error_buffer\0")?);
            let run: RunFn = std::mem::transmute(symbol(b"nft_run_cmd_from_buffer\0")?);
            let set_flags: SetFlagsFn = std::mem::transmute(symbol(b"nft_ctx_output_set_flags\0")?);
            let context = |json: bool| -> Result<*mut c_void, String> {
                let ctx = new(0);
                if ctx.is_null() {
                    return Err("nft_ctx_new failed".into());
                }
                if buffer_output(ctx) != 0 || buffer_error(ctx) != 0 {
                    free(ctx);
                    return Err("cannot buffer libnftables output".into());
                }
                if json {
                    set_flags(ctx, OUTPUT_JSON);
                }
                Ok(ctx)
            };
            let ctx = context(false)?;
            let json = match context(true) {
                Ok(json) => json,
                Err(e) => {
                    free(ctx);
                    return Err(e);
                }
            };
            Ok(Self {
                free,
                run,
                output,
                error,
                ctx,
                json,
                _library: library,
            })
        }
    }

    /// Runs `script` (one transaction); returns the output, or nft's error message.
    pub fn run(&mut self, script: &str, json: bool) -> Result<String, String> {
        let ctx = if json { self.json } else { self.ctx };
        let script = CString::new(script).map_err(|_| "script contains a NUL byte".to_owned())?;
        // SAFETY: ctx is a live context owned by self; the buffers it returns
        // are NUL-terminated and valid until the next call on the same context.
        unsafe {
            let rc = (self.run)(ctx, script.as_ptr());
            let output = read((self.output)(ctx));
            let error = read((self.error)(ctx));
            if rc == 0 {
                Ok(output)
            } else {
                let error = error.trim();
                Err(if error.is_empty() {
                    format!("libnftables failed with code {rc}")
                } else {
                    error.to_owned()
                })
            }
        }
    }
}

/// # Safety
/// `ptr` is null or a NUL-terminated string.
unsafe fn read(ptr: *const c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        CStr::from_ptr(ptr).to_string_lossy().into_owned()
    }
}

impl Drop for Libnftables {
    fn drop(&mut self) {
        // SAFETY: both contexts were created by nft_ctx_new and are freed once.
        unsafe {
            (self.free)(self.ctx);
            (self.free)(self.json);
        }
    }
}
