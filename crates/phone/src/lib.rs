//! Phone numbers for ringfence: parse, validate, classify, format and mask, exactly as
//! libphonenumber does. No I/O and no dependency on the rest of the service.
