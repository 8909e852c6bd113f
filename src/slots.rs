//! Direct access to the attributes the hooks read and write on every request: a request's
//! meta, headers and encoding, a response's status and flags. On Scrapy >= 2.13 these live in
//! `__slots__` members; `getattr` on one looks the name up along the type's MRO and then calls
//! the member descriptor's get function. The hooks keep the descriptor and call its get and set
//! functions themselves: the code `getattr` and `setattr` end in, without the lookup. The
//! descriptor checks the object's type (a TypeError for an object of another class), as it
//! does for `getattr`.

use std::ffi::c_void;
use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyType};

/// One attribute of a Scrapy class, reached through its member descriptor when it is a
/// `__slots__` member, else by name.
pub enum Member {
    Slot(Slot),
    Named(Py<PyString>),
}

impl Member {
    /// `owner.name`: a `__slots__` member when the class defines it as one and the interpreter
    /// hands out the descriptor's functions (CPython >= 3.10; `PyType_GetSlot` takes static
    /// types, as the member descriptor's is, from 3.10 on); by name otherwise.
    pub fn of(owner: &Bound<'_, PyType>, name: &str) -> PyResult<Self> {
        let py = owner.py();
        Ok(match Slot::of(owner, name)? {
            Some(slot) => Self::Slot(slot),
            None => Self::Named(PyString::intern(py, name).unbind()),
        })
    }

    pub fn get<'py>(&self, object: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Self::Slot(slot) => slot.get(object),
            Self::Named(name) => object.getattr(name.bind(object.py())),
        }
    }

    pub fn set(&self, object: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        match self {
            Self::Slot(slot) => slot.set(object, value),
            Self::Named(name) => object.setattr(name.bind(object.py()), value),
        }
    }
}

/// A `member_descriptor` and its type's get and set functions.
pub struct Slot {
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
pub struct DictNew {
    class: Py<PyType>,
    new: ffi::newfunc,
    no_args: Py<PyAny>,
}

impl DictNew {
    /// `class` must be a heap type (a class defined in Python), whose slots any CPython
    /// version hands out.
    pub fn of(class: &Bound<'_, PyType>) -> PyResult<Self> {
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
    pub fn make_with<'py>(&self, attrs: Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
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

    pub fn make<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
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
