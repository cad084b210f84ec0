// PNG through libpng's simplified API, JPEG through libjpeg's decompressor with its errors turned
// into exceptions (libjpeg's default handler exits the process).
#include "core/data/image.h"

#include <png.h>
#include <setjmp.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>

#include "core/util/error.h"

namespace cohort::core::data {
namespace {

constexpr uint64_t kMaxPixels = uint64_t{1} << 28;
constexpr size_t kMaxFileBytes = size_t{1} << 30;

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) COHORT_THROW(IoError, "cannot open image ", path);
  f.seekg(0, std::ios::end);
  const auto size = static_cast<size_t>(f.tellg());
  if (size > kMaxFileBytes) COHORT_THROW(IoError, "image ", path, " is larger than 1 GiB");
  f.seekg(0);
  std::string bytes(size, '\0');
  f.read(bytes.data(), static_cast<std::streamsize>(size));
  if (!f) COHORT_THROW(IoError, "cannot read image ", path);
  return bytes;
}

Image decode_png(const std::string& bytes, const std::string& path, int channels) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&img, bytes.data(), bytes.size()))
    COHORT_THROW(IoError, "image ", path, " is not a readable PNG: ", img.message);
  if (static_cast<uint64_t>(img.width) * img.height > kMaxPixels) {
    png_image_free(&img);
    COHORT_THROW(IoError, "image ", path, " is larger than 2^28 pixels");
  }
  img.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  Image out{img.height, img.width, channels, {}};
  out.pixels.resize(PNG_IMAGE_SIZE(img));
  if (!png_image_finish_read(&img, nullptr, out.pixels.data(), 0, nullptr)) {
    const std::string why = img.message;
    png_image_free(&img);
    COHORT_THROW(IoError, "image ", path, " is not a readable PNG: ", why);
  }
  return out;
}

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_fail(j_common_ptr cinfo) {
  auto* e = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  longjmp(e->jump, 1);
}

Image decode_jpeg(const std::string& bytes, const std::string& path, int channels) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_fail;
  err.mgr.output_message = [](j_common_ptr) {};
  // libjpeg only warns about corrupt or truncated data and pads the image with grey: for
  // training data that is an error (level -1 is a warning; others are traces).
  err.mgr.emit_message = [](j_common_ptr cinfo, int level) {
    if (level < 0) cinfo->err->error_exit(cinfo);
  };
  // Everything setjmp may return to lives outside this function's changing locals.
  Image* out = new Image();
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    delete out;
    COHORT_THROW(IoError, "image ", path, " is not a readable JPEG: ", err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&cinfo, TRUE);
  if (static_cast<uint64_t>(cinfo.image_width) * cinfo.image_height > kMaxPixels) {
    jpeg_destroy_decompress(&cinfo);
    delete out;
    COHORT_THROW(IoError, "image ", path, " is larger than 2^28 pixels");
  }
  cinfo.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&cinfo);
  out->height = cinfo.output_height;
  out->width = cinfo.output_width;
  out->channels = channels;
  out->pixels.resize(static_cast<size_t>(out->height * out->width * channels));
  const size_t stride = static_cast<size_t>(out->width * channels);
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW row = out->pixels.data() + cinfo.output_scanline * stride;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  Image result = std::move(*out);
  delete out;
  return result;
}

}  // namespace

Image read_image(const std::string& path, int channels) {
  COHORT_CHECK(channels == 1 || channels == 3, "read_image: channels must be 1 or 3, got ",
               channels);
  const std::string bytes = read_file(path);
  static const unsigned char kPng[] = {0x89, 'P', 'N', 'G'};
  if (bytes.size() >= 4 && std::memcmp(bytes.data(), kPng, 4) == 0)
    return decode_png(bytes, path, channels);
  if (bytes.size() >= 3 && static_cast<unsigned char>(bytes[0]) == 0xFF &&
      static_cast<unsigned char>(bytes[1]) == 0xD8 && static_cast<unsigned char>(bytes[2]) == 0xFF)
    return decode_jpeg(bytes, path, channels);
  COHORT_THROW(IoError, "image ", path, " is neither a PNG nor a JPEG");
}

void resize_bilinear_chw(const Image& in, int64_t height, int64_t width, float* out) {
  const int64_t C = in.channels;
  const double sy = static_cast<double>(in.height) / static_cast<double>(height);
  const double sx = static_cast<double>(in.width) / static_cast<double>(width);
  for (int64_t y = 0; y < height; ++y) {
    const double fy = std::max(0.0, (static_cast<double>(y) + 0.5) * sy - 0.5);
    const int64_t y0 = std::min(static_cast<int64_t>(fy), in.height - 1);
    const int64_t y1 = std::min(y0 + 1, in.height - 1);
    const double wy = fy - static_cast<double>(y0);
    for (int64_t x = 0; x < width; ++x) {
      const double fx = std::max(0.0, (static_cast<double>(x) + 0.5) * sx - 0.5);
      const int64_t x0 = std::min(static_cast<int64_t>(fx), in.width - 1);
      const int64_t x1 = std::min(x0 + 1, in.width - 1);
      const double wx = fx - static_cast<double>(x0);
      for (int64_t c = 0; c < C; ++c) {
        auto px = [&](int64_t yy, int64_t xx) {
          return static_cast<double>(in.pixels[static_cast<size_t>((yy * in.width + xx) * C + c)]);
        };
        const double v = (1 - wy) * ((1 - wx) * px(y0, x0) + wx * px(y0, x1)) +
                         wy * ((1 - wx) * px(y1, x0) + wx * px(y1, x1));
        out[(c * height + y) * width + x] = static_cast<float>(v);
      }
    }
  }
}

}  // namespace cohort::core::data
