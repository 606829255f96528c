// C-simulation entry points for ctypes (accllm.hls.csim): the kernel top compiled with g++ and ap_types. The host
// hands byte buffers; they become the kernel's memory words here (little-endian: byte i of a buffer is bits
// [8i+7:8i] of the stream of words) and the written ones go back after the run.
#include <vector>

#include "parameters.h"

using accllm::word_t;

extern "C" void accllm_top(const word_t *, unsigned, const word_t *, word_t *, const word_t *, unsigned, unsigned,
                           word_t *, word_t *, unsigned, word_t *, unsigned ACCLLM_ENG_PARAMS);

namespace {

const size_t KV_BYTES = (size_t)engine_cfg::layers * 2 * engine_cfg::kv_heads * engine_cfg::slots *
                        accllm::kv_slot_bytes<engine_cfg>();
const size_t TRACE_U32 = (size_t)engine_cfg::layers * engine_cfg::trace_size;  // one token's layers
// The LM head's region after the run's token traces: head_in_a [hidden], head_acc [vocab][hidden / group].
const size_t HEAD_TRACE_U32 = engine_cfg::hidden + (size_t)engine_cfg::vocab * (engine_cfg::hidden / engine_cfg::group);

std::vector<word_t> to_words(const void *p, size_t nbytes) {
    std::vector<word_t> w((nbytes + accllm::WORD_BYTES - 1) / accllm::WORD_BYTES + 1);  // +1: a word past the end
    for (size_t i = 0; i < w.size() && i * accllm::WORD_BYTES < nbytes; i++) {
        const size_t left = nbytes - i * accllm::WORD_BYTES;
        accllm_set_bytes(w[i], (const uint8_t *)p + i * accllm::WORD_BYTES,
                         (unsigned)(left < accllm::WORD_BYTES ? left : accllm::WORD_BYTES));
    }
    return w;
}

void from_words(const std::vector<word_t> &w, void *p, size_t nbytes) {
    for (size_t i = 0; i * accllm::WORD_BYTES < nbytes; i++) {
        const size_t left = nbytes - i * accllm::WORD_BYTES;
        accllm_get_bytes(w[i], (uint8_t *)p + i * accllm::WORD_BYTES,
                         (unsigned)(left < accllm::WORD_BYTES ? left : accllm::WORD_BYTES));
    }
}

// The blob in words, converted once per blob (the host passes the same buffer run after run).
struct blob_cache {
    std::vector<uint8_t> bytes;  // what the words were built from: a changed buffer is caught by comparing
    std::vector<word_t> words;
};

blob_cache &cached_blob() { static blob_cache c; return c; }

}  // namespace

// The blob's words, rebuilt only when the blob's bytes differ from the last call's (a compare is several times
// cheaper than the conversion).
static const std::vector<word_t> &blob_words(const uint8_t *blob, unsigned long long nbytes) {
    blob_cache &c = cached_blob();
    if (c.bytes.size() != nbytes || std::memcmp(c.bytes.data(), blob, nbytes) != 0) {
        c.bytes.assign(blob, blob + nbytes);
        c.words = to_words(blob, nbytes);
    }
    return c.words;
}

// One kernel run (accllm_top) over n tokens at stream positions pos .. pos + n - 1, in blocks of engine_cfg::block
// (one weight pass each); decode is n = 1. topk: K uint32 ids then K float32 logits of the last token; logits
// (float32 [vocab]) written when logits_en; trace (int32: token t's layers at t * layers * trace_size, then the LM
// head's region) when trace_en. Returns 0, or -1 for a run the kernel refuses (n = 0 or n > max_tokens: nothing
// computed, the top-K ids 0xFFFFFFFF).
extern "C" int accllm_csim_prefill(const uint8_t *program, unsigned n_instr, const uint8_t *blob,
                                   unsigned long long blob_bytes, uint8_t *kv, const unsigned *tokens, unsigned n,
                                   unsigned pos, uint8_t *topk, float *logits, unsigned logits_en, int32_t *trace,
                                   unsigned trace_en) {
    const bool ok = n >= 1 && n <= engine_cfg::max_tokens;
    const size_t trace_bytes = 4 * (TRACE_U32 * (ok ? n : 0) + HEAD_TRACE_U32);
    std::vector<word_t> prog = to_words(program, 32 * (size_t)n_instr), kvw = to_words(kv, KV_BYTES);
    std::vector<word_t> tokw = to_words(tokens, 4 * (size_t)(ok ? n : 0));
    std::vector<word_t> topw = to_words(topk, 8 * engine_cfg::topk), lw(engine_cfg::vocab / accllm::WORD_U32 + 2);
    std::vector<word_t> trw = trace_en ? to_words(trace, trace_bytes) : std::vector<word_t>(1);
    ACCLLM_ENG_PORTS  // the engine's streams (ACCLLM_ENGINE_STREAM co-simulation)
    accllm_top(prog.data(), n_instr, blob_words(blob, blob_bytes).data(), kvw.data(), tokw.data(), n, pos,
               topw.data(), lw.data(), logits_en, trw.data(), trace_en ACCLLM_ENG_ARGS);
    from_words(kvw, kv, KV_BYTES);
    from_words(topw, topk, 8 * engine_cfg::topk);
    if (logits_en) from_words(lw, logits, 4 * (size_t)engine_cfg::vocab);
    if (trace_en) from_words(trw, trace, trace_bytes);
    return ok ? 0 : -1;
}

extern "C" unsigned accllm_csim_trace_size() { return engine_cfg::trace_size; }
extern "C" unsigned accllm_csim_head_trace_size() { return HEAD_TRACE_U32; }
extern "C" unsigned accllm_csim_prefill_block() { return engine_cfg::block; }
extern "C" unsigned accllm_csim_max_tokens() { return engine_cfg::max_tokens; }
extern "C" unsigned accllm_csim_topk() { return engine_cfg::topk; }
extern "C" unsigned accllm_csim_word_bits() { return ACCLLM_WORD_BITS; }
extern "C" unsigned long long accllm_csim_weight_bytes() { return accllm::weight_bytes_read(); }
extern "C" void accllm_csim_clear_weight_bytes() { accllm::weight_bytes_read() = 0; }
