//! The wall around Scrapy's internals, Rust side: every direct access the hooks make to
//! Scrapy's objects is here, each with the public API as its fallback. Which one is used is
//! decided once, at start, by the Python wall (`_scrapy.py`), which probes real objects of the
//! installed Scrapy and hands its findings over as `Probes`:
//!
//! - a request's meta, headers and encoding: the `__slots__` members `_meta`, `_headers`,
//!   `_encoding` (None until first use), reached through their member descriptors, and new
//!   `Headers` made as `dict.__new__` makes them (Scrapy >= 2.18); else `request.meta` /
//!   `request.headers`;
//! - a response's `status` and `flags`: member descriptors where they are slots (Scrapy >=
//!   2.15; the flags in `_flags`, None until first use); else the attributes by name;
//! - header storage: `Headers` is a dict of normalised names to lists of bytes, written with
//!   the dict's own functions; else through `Headers.__setitem__` and friends;
//! - Scrapy's HttpProxyMiddleware's note of which proxy a `Proxy-Authorization` header belongs
//!   to (a meta key, `_auth_proxy` today); else credentials go in the proxy URL, which that
//!   middleware turns into the header itself;
//! - a refused CONNECT's status, read off the message of the exception the download handler
//!   raised (no public API has it): Scrapy's `TunnelError`, curl_cffi's `CurlError`
//!   (scrapy-impersonate's handler); a message of another form reads as a transport failure
//!   without a status;
//! - a browser's failure (Playwright's `Error`, scrapy-playwright's handler): its Chromium
//!   `net::ERR_...` code, read off the message (a refused CONNECT is
//!   `net::ERR_TUNNEL_CONNECTION_FAILED`, with no status); Playwright's `TimeoutError`.
//!
//! `getattr` on a `__slots__` member looks the name up along the type's MRO and then calls the
//! member descriptor's get function; the hooks keep the descriptor and call its get and set
//! functions themselves, without the lookup. The descriptor checks the object's type (a
//! TypeError for an object of another class), as it does for `getattr`.

use std::ffi::c_void;
use std::ptr;

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple, PyType};

/// One attribute of a Scrapy class, reached through its member descriptor when it is a
/// `__slots__` member, else by name.
enum Member {
    Slot(Slot),
    Named(Py<PyString>),
}

impl Member {
    /// `owner.name`: a `__slots__` member when the class defines it as one and the interpreter
    /// hands out the descriptor's functions (CPython >= 3.10; `PyType_GetSlot` takes static
    /// types, as the member descriptor's is, from 3.10 on); by name otherwise.
    fn of(owner: &Bound<'_, PyType>, name: &str, public_only: bool) -> PyResult<Self> {
        let py = owner.py();
        if public_only {
            return Ok(Self::Named(PyString::intern(py, name).unbind()));
        }
        Ok(match Slot::of(owner, name)? {
            Some(slot) => Self::Slot(slot),
            None => Self::Named(PyString::intern(py, name).unbind()),
        })
    }

    fn get<'py>(&self, object: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Self::Slot(slot) => slot.get(object),
            Self::Named(name) => object.getattr(name.bind(object.py())),
        }
    }

    fn set(&self, object: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        match self {
            Self::Slot(slot) => slot.set(object, value),
            Self::Named(name) => object.setattr(name.bind(object.py()), value),
        }
    }
}

/// A `member_descriptor` and its type's get and set functions.
struct Slot {
    descriptor: Py<PyAny>,
    get: ffi::descrgetfunc,
    set: ffi::descrsetfunc,
}

impl Slot {
    fn of(owner: &Bound<'_, PyType>, name: &str) -> PyResult<Option<Self>> {
        let py = owner.py();
        if py.version_info() < (3, 10) {
            return Ok(None);
        }
        let Some(descriptor) = owner.getattr_opt(name)? else {
            return Ok(None);
        };
        let member_descriptor = py.import("types")?.getattr("MemberDescriptorType")?;
        let kind = descriptor.get_type();
        if !kind.is(&member_descriptor) {
            return Ok(None);
        }
        // SAFETY: `kind` is a live type object (member_descriptor); PyType_GetSlot reads its
        // slot table, and on CPython >= 3.10 accepts static types.
        let (get, set) = unsafe {
            (
                ffi::PyType_GetSlot(kind.as_type_ptr(), ffi::Py_tp_descr_get),
                ffi::PyType_GetSlot(kind.as_type_ptr(), ffi::Py_tp_descr_set),
            )
        };
        if get.is_null() || set.is_null() {
            return Ok(None);
        }
        Ok(Some(Self {
            descriptor: descriptor.unbind(),
            // SAFETY: these slots hold functions of exactly these signatures (CPython's
            // `tp_descr_get` and `tp_descr_set`).
            get: unsafe { std::mem::transmute::<*mut c_void, ffi::descrgetfunc>(get) },
            set: unsafe { std::mem::transmute::<*mut c_void, ffi::descrsetfunc>(set) },
        }))
    }

    fn get<'py>(&self, object: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: the descriptor's own get function, called as `getattr` calls it: with the
        // descriptor and a live object (the type argument may be NULL). It returns a new
        // reference, or NULL with an exception set (wrong type, member unset).
        unsafe {
            Bound::from_owned_ptr_or_err(
                object.py(),
                (self.get)(self.descriptor.as_ptr(), object.as_ptr(), ptr::null_mut()),
            )
        }
    }

    fn set(&self, object: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        // SAFETY: as `get`, for the set function: it takes its own reference to `value`, and
        // returns -1 with an exception set on failure.
        let status =
            unsafe { (self.set)(self.descriptor.as_ptr(), object.as_ptr(), value.as_ptr()) };
        if status < 0 {
            return Err(PyErr::fetch(object.py()));
        }
        Ok(())
    }
}

/// Makes an empty instance of a `dict` subclass (Scrapy's `Headers`) as `dict.__new__(cls)`
/// does, by calling the class's `tp_new` directly instead of through `dict.__new__`.
struct DictNew {
    class: Py<PyType>,
    new: ffi::newfunc,
    no_args: Py<PyAny>,
}

impl DictNew {
    /// `class` must be a heap type (a class defined in Python), whose slots any CPython
    /// version hands out.
    fn of(class: &Bound<'_, PyType>) -> PyResult<Self> {
        let py = class.py();
        // SAFETY: a live type object; for a heap type PyType_GetSlot works on every version.
        let new = unsafe { ffi::PyType_GetSlot(class.as_type_ptr(), ffi::Py_tp_new) };
        if new.is_null() {
            return Err(PyErr::take(py).unwrap_or_else(|| {
                pyo3::exceptions::PyTypeError::new_err("the headers class cannot be made")
            }));
        }
        Ok(Self {
            class: class.clone().unbind(),
            // SAFETY: `tp_new` holds a function of exactly this signature.
            new: unsafe { std::mem::transmute::<*mut c_void, ffi::newfunc>(new) },
            no_args: pyo3::types::PyTuple::empty(py).into_any().unbind(),
        })
    }

    /// An empty instance whose attributes are `attrs`, a dict it then owns: the dict is given
    /// whole (what `obj.__dict__ = attrs` does), which costs less than a first `setattr` on an
    /// instance of a `dict` subclass (that makes its attribute dict then, entry by entry).
    fn make_with<'py>(&self, attrs: Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        let py = attrs.py();
        let made = self.make(py)?;
        // SAFETY: a live instance of a class with a `__dict__` (Headers, a Python class) and a
        // dict; it takes its own reference to the dict, and returns -1 with an error set on
        // failure.
        let status =
            unsafe { ffi::PyObject_GenericSetDict(made.as_ptr(), attrs.as_ptr(), ptr::null_mut()) };
        if status < 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(made)
    }

    fn make<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        // SAFETY: `tp_new(cls, args, kwargs)` with the class it belongs to, an empty tuple and
        // no keywords: what `cls.__new__(cls)` does. A new reference or NULL with an error.
        unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                (self.new)(
                    self.class.as_ptr().cast(),
                    self.no_args.as_ptr(),
                    ptr::null_mut(),
                ),
            )
        }
    }
}

/// A request's slots, and how to make its headers (see `Scrapy::request`).
struct RequestSlots {
    meta: Member,
    headers: Member,
    encoding: Member,
    /// Makes an empty `Headers` as `dict.__new__(Headers)` does.
    new_headers: DictNew,
}

/// How the hooks reach into Scrapy's objects, as the probes found them.
pub struct Scrapy {
    /// `Some` when a request keeps its meta, headers and encoding in slots, None until first
    /// use, and `Headers` can be made without running its `__init__` (Scrapy >= 2.18); `None`:
    /// always go through `request.meta` and `request.headers`.
    request: Option<RequestSlots>,
    /// The response's flags in the slot `_flags` (None until first use; Scrapy >= 2.15);
    /// `None`: `flags`.
    flags_slot: Option<Member>,
    status: Member,
    /// `Headers` may be written with the dict's own functions.
    headers_are_dicts: bool,
    /// The meta key where HttpProxyMiddleware notes the proxy its header belongs to; `None`:
    /// not found, so credentials go in the proxy URL.
    auth_proxy_key: Option<Py<PyString>>,
    /// The exceptions whose message may give a refused CONNECT's status (`refused_status`).
    refused_connect: Py<PyTuple>,
    /// The exceptions that mean an attempt failed on the way.
    transport: Py<PyTuple>,
    /// `_scrapy.unreachable`: whether a transport failure says the proxy's own address could
    /// not be reached (which exceptions, and in which form, is the Python wall's knowledge).
    unreachable: Py<PyAny>,
    /// Playwright's `Error` and `TimeoutError`, if installed.
    browser_errors: Option<(Py<PyType>, Py<PyType>)>,
}

impl Scrapy {
    /// `probes`: the Python wall's findings (`_scrapy.Probes`).
    pub fn new(probes: &Bound<'_, PyAny>) -> PyResult<Self> {
        let py = probes.py();
        let public_only: bool = probes.getattr("public_api_only")?.extract()?;
        let http = py.import("scrapy.http")?;
        let request = http.getattr("Request")?.cast_into::<PyType>()?;
        let response = http.getattr("Response")?.cast_into::<PyType>()?;
        let headers_type = probes.getattr("lazy_headers_type")?;
        let auth_proxy_key = probes.getattr("auth_proxy_key")?;
        Ok(Self {
            request: if headers_type.is_none() {
                None
            } else {
                Some(RequestSlots {
                    meta: Member::of(&request, "_meta", public_only)?,
                    headers: Member::of(&request, "_headers", public_only)?,
                    encoding: Member::of(&request, "_encoding", public_only)?,
                    new_headers: DictNew::of(headers_type.cast::<PyType>()?)?,
                })
            },
            flags_slot: if probes.getattr("response_flags_slot")?.extract()? {
                Some(Member::of(&response, "_flags", public_only)?)
            } else {
                None
            },
            status: Member::of(&response, "status", public_only)?,
            headers_are_dicts: probes.getattr("headers_are_dicts")?.extract()?,
            auth_proxy_key: if auth_proxy_key.is_none() {
                None
            } else {
                Some(auth_proxy_key.cast_into::<PyString>()?.unbind())
            },
            refused_connect: probes
                .getattr("refused_connect")?
                .cast_into::<PyTuple>()?
                .unbind(),
            transport: probes
                .getattr("transport_exceptions")?
                .cast_into::<PyTuple>()?
                .unbind(),
            unreachable: probes.getattr("unreachable")?.unbind(),
            browser_errors: probes.getattr("browser_errors")?.extract()?,
        })
    }

    pub fn meta<'py>(&self, request: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
        let py = request.py();
        if let Some(slots) = &self.request {
            let current = slots.meta.get(request)?;
            if !current.is_none() {
                return Ok(current.cast_into::<PyDict>()?);
            }
            let made = PyDict::new(py);
            slots.meta.set(request, &made)?;
            return Ok(made);
        }
        Ok(request
            .getattr(intern!(py, "meta"))?
            .cast_into::<PyDict>()?)
    }

    pub fn headers<'py>(&self, request: &Bound<'py, PyAny>) -> PyResult<Headers<'py>> {
        let py = request.py();
        let object = match &self.request {
            Some(slots) => {
                let current = slots.headers.get(request)?;
                if current.is_none() {
                    // As `Headers(encoding=request.encoding)` leaves it.
                    let attrs = PyDict::new(py);
                    attrs.set_item(intern!(py, "encoding"), slots.encoding.get(request)?)?;
                    let made = slots.new_headers.make_with(attrs)?;
                    slots.headers.set(request, &made)?;
                    made
                } else {
                    current
                }
            }
            None => request.getattr(intern!(py, "headers"))?,
        };
        self.wrap(object)
    }

    /// The request's headers if it has any yet (on the slot path an unused request has
    /// none; the public path makes them).
    pub fn existing_headers<'py>(
        &self,
        request: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Headers<'py>>> {
        let object = match &self.request {
            Some(slots) => {
                let current = slots.headers.get(request)?;
                if current.is_none() {
                    return Ok(None);
                }
                current
            }
            None => request.getattr(intern!(request.py(), "headers"))?,
        };
        self.wrap(object).map(Some)
    }

    fn wrap<'py>(&self, headers: Bound<'py, PyAny>) -> PyResult<Headers<'py>> {
        Ok(if self.headers_are_dicts {
            Headers::Dict(headers.cast_into::<PyDict>()?)
        } else {
            Headers::Public(headers)
        })
    }

    /// Statuses beyond u16 are in no status set: they count as what they are, successes.
    pub fn status(&self, response: &Bound<'_, PyAny>) -> PyResult<u16> {
        let status: i64 = match self.status.get(response) {
            Ok(status) => status.extract()?,
            Err(_) => response
                .getattr(intern!(response.py(), "status"))?
                .extract()?,
        };
        Ok(status.clamp(0, u16::MAX.into()) as u16)
    }

    /// Whether the response came from HttpCacheMiddleware (its flags hold "cached"). In the
    /// `_flags` slot None means no flags; a response without that slot (not one of Scrapy's)
    /// is read through `flags`.
    pub fn cached(&self, response: &Bound<'_, PyAny>) -> PyResult<bool> {
        let py = response.py();
        let flags = match &self.flags_slot {
            Some(slot) => match slot.get(response) {
                Ok(flags) if flags.is_none() => return Ok(false),
                Ok(flags) => flags,
                Err(_) => response.getattr(intern!(py, "flags"))?,
            },
            None => response.getattr(intern!(py, "flags"))?,
        };
        flags.contains(intern!(py, "cached"))
    }

    /// What an exception says of the attempt: `None` for a programming error; else its class
    /// name, for a refused CONNECT the proxy's status, and whether the proxy's own address
    /// could not be reached (refused, DNS, connect timeout).
    pub fn transport_failure(
        &self,
        exception: &Bound<'_, PyAny>,
    ) -> PyResult<Option<(String, Option<u16>, bool)>> {
        let py = exception.py();
        if let Some((error, timeout)) = &self.browser_errors {
            if exception.is_instance(timeout.bind(py))? {
                return Ok(Some(("TimeoutError".to_owned(), None, false)));
            }
            if exception.is_instance(error.bind(py))? {
                let message = exception.str()?;
                let code = net_error(&message.to_cow()?).map(str::to_owned);
                return Ok(code.map(|code| (code, None, false)));
            }
        }
        if !exception.is_instance(self.transport.bind(py))? {
            return Ok(None);
        }
        let name = exception.get_type().name()?.to_string();
        let refused = if exception.is_instance(self.refused_connect.bind(py))? {
            refused_status(&exception.str()?.to_cow()?)
        } else {
            None
        };
        let unreachable =
            refused.is_none() && self.unreachable.bind(py).call1((exception,))?.is_truthy()?;
        Ok(Some((name, refused, unreachable)))
    }

    /// HttpProxyMiddleware's meta key for the proxy a header belongs to, if found.
    pub fn auth_proxy_key<'py>(&self, py: Python<'py>) -> Option<&Bound<'py, PyString>> {
        self.auth_proxy_key.as_ref().map(|key| key.bind(py))
    }
}

/// The proxy's status in a refused CONNECT's message, as each supported handler writes it:
/// Scrapy's HTTP/1.1 handler (`TunnelError`) `... [{'status': 407, 'reason': b'...'}]`, curl
/// (curl_cffi's `CurlError`) `... CONNECT tunnel failed, response 407. ...`.
fn refused_status(message: &str) -> Option<u16> {
    ["'status': ", "CONNECT tunnel failed, response "]
        .iter()
        .find_map(|marker| status_after(message, marker))
}

/// Chromium's network error in a Playwright error's message (`Page.goto:
/// net::ERR_TUNNEL_CONNECTION_FAILED at https://...`): `ERR_TUNNEL_CONNECTION_FAILED`.
fn net_error(message: &str) -> Option<&str> {
    let (_, rest) = message.split_once("net::")?;
    let end = rest
        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .unwrap_or(rest.len());
    let code = &rest[..end];
    (code.starts_with("ERR_") && code.len() > 4).then_some(code)
}

/// The three-digit status right after `marker` in `message`.
fn status_after(message: &str, marker: &str) -> Option<u16> {
    let (_, rest) = message.split_once(marker)?;
    let digits = rest.get(..3)?;
    if !digits.bytes().all(|b| b.is_ascii_digit())
        || rest[3..].starts_with(|c: char| c.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

/// A request's headers, written as `Headers` stores them (a normalised name to a list of
/// bytes) or through its public methods.
pub enum Headers<'py> {
    Dict(Bound<'py, PyDict>),
    Public(Bound<'py, PyAny>),
}

impl<'py> Headers<'py> {
    /// `name` as `Headers` normalises it; `value` already bytes.
    pub fn set(&self, name: &Bound<'py, PyBytes>, value: &Bound<'py, PyBytes>) -> PyResult<()> {
        match self {
            Self::Dict(dict) => dict.set_item(name, PyList::new(dict.py(), [value])?),
            Self::Public(headers) => headers.set_item(name, value),
        }
    }

    /// The header's value (the last one), if it has one.
    pub fn value(&self, name: &Bound<'py, PyBytes>) -> PyResult<Option<Vec<u8>>> {
        let last = match self {
            Self::Dict(dict) => match dict.get_item(name)? {
                Some(values) => values
                    .cast::<PyList>()
                    .ok()
                    .and_then(|list| list.iter().last()),
                None => None,
            },
            Self::Public(headers) => {
                let value = headers.call_method1(intern!(headers.py(), "get"), (name,))?;
                (!value.is_none()).then_some(value)
            }
        };
        Ok(last.and_then(|last| last.extract::<Vec<u8>>().ok()))
    }

    pub fn contains(&self, name: &Bound<'py, PyBytes>) -> PyResult<bool> {
        match self {
            Self::Dict(dict) => dict.contains(name),
            Self::Public(headers) => headers.contains(name),
        }
    }

    pub fn remove(&self, name: &Bound<'py, PyBytes>) -> PyResult<()> {
        if self.contains(name)? {
            self.delete(name)?;
        }
        Ok(())
    }

    /// Removes a header that is there.
    pub fn delete(&self, name: &Bound<'py, PyBytes>) -> PyResult<()> {
        match self {
            Self::Dict(dict) => dict.del_item(name),
            Self::Public(headers) => headers.del_item(name),
        }
    }
}
