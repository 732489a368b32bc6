//! An image as a model is sent it: a `data:` URL of the stored bytes, scaled down (and made a
//! JPEG) when the file or its longer side is larger than the agent allows. CPU work: call it
//! from `spawn_blocking`.

use std::io::Cursor;

use base64::Engine;
use image::{ImageFormat, ImageReader, imageops::FilterType};

pub fn data_url(
    bytes: &[u8],
    mime: &str,
    max_bytes: usize,
    max_side: u32,
) -> Result<String, String> {
    let mime = super::essence(mime);
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    let format = reader.format().ok_or("not an image format we read")?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    let sendable = matches!(
        format,
        ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP
    );
    if sendable && bytes.len() <= max_bytes && w.max(h) <= max_side {
        let mime = match format {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            _ if mime.starts_with("image/") => mime.as_str(),
            _ => "image/webp",
        };
        return Ok(encode(mime, bytes));
    }
    let img =
        image::load_from_memory(bytes).map_err(|e| format!("cannot decode the image: {e}"))?;
    let img = if w.max(h) > max_side {
        img.resize(max_side, max_side, FilterType::Triangle)
    } else {
        img
    };
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(img.to_rgb8())
        .write_to(&mut Cursor::new(&mut out), ImageFormat::Jpeg)
        .map_err(|e| format!("cannot encode the image: {e}"))?;
    Ok(encode("image/jpeg", &out))
}

fn encode(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb([200, 30, 30]));
        let mut out = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn a_small_image_goes_as_it_is_and_a_large_one_is_scaled() {
        let small = png(20, 10);
        let url = data_url(&small, "image/png", 1_000_000, 1536).unwrap();
        assert!(url.starts_with("data:image/png;base64,"));
        let b64 = url.split_once(',').unwrap().1;
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            small
        );

        let large = png(800, 400);
        let url = data_url(&large, "image/png", 1_000_000, 200).unwrap();
        assert!(url.starts_with("data:image/jpeg;base64,"));
        let b64 = url.split_once(',').unwrap().1;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!((img.width(), img.height()), (200, 100));
        assert!(data_url(b"not an image", "image/jpeg", 10, 10).is_err());
    }
}
