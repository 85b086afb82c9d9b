//! Integration tests, in one binary so DataFusion is linked once.
//! `landing`: the library's landing API against real lakes.
//! `cli`: the real `ferry` binary end to end.

mod cli;
mod landing;
