/*
 * A C client of the rtdenoise service: publish frames, receive them denoised.
 *
 * What acquisition software written in C (or anything that can call libzmq and msgpack-c:
 * C#, LabVIEW, MATLAB MEX) does to use the service. The wire protocol is docs/protocol.md:
 * three parts per message: topic "frames/<stream>", a msgpack map header, raw frames.
 *
 * Build (Debian/Ubuntu: apt install libzmq3-dev libmsgpack-dev):
 *     cc -O2 -o rtdenoise_client rtdenoise_client.c -lzmq -lmsgpackc
 * Run against `rtdenoise serve --bind-sub` (its input binds; this client connects):
 *     ./rtdenoise_client tcp://127.0.0.1:5555 tcp://127.0.0.1:5556 rig-c 100 out.f32
 * sends 100 spectra of 152 uint16 counts on stream "rig-c" at 100 Hz (frame i, bin j:
 * 200 + (7 i + 13 j) % 50), receives the 100 denoised frames and writes them to out.f32
 * (float32, frame after frame). Exit 0 when every frame came back in order.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define W 152

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void pack_str(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* Send one frame: topic, header (a msgpack map), payload. */
static int send_frame(void *pub, const char *stream, uint64_t seq, const uint16_t *frame) {
    char topic[160];
    snprintf(topic, sizeof topic, "frames/%s", stream);
    msgpack_sbuffer buf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&buf);
    msgpack_packer_init(&pk, &buf, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 8);
    pack_str(&pk, "v");      msgpack_pack_int(&pk, 1);
    pack_str(&pk, "stream"); pack_str(&pk, stream);
    pack_str(&pk, "seq");    msgpack_pack_uint64(&pk, seq);
    pack_str(&pk, "n");      msgpack_pack_int(&pk, 1);
    pack_str(&pk, "shape");  msgpack_pack_array(&pk, 1); msgpack_pack_int(&pk, W);
    pack_str(&pk, "dtype");  pack_str(&pk, "<u2");  /* x86 and ARM are little-endian */
    pack_str(&pk, "t_ns");   msgpack_pack_uint64(&pk, (uint64_t)now_ns());
    pack_str(&pk, "fs");     msgpack_pack_double(&pk, 5.0);
    int rc = zmq_send(pub, topic, strlen(topic), ZMQ_SNDMORE) < 0
          || zmq_send(pub, buf.data, buf.size, ZMQ_SNDMORE) < 0
          || zmq_send(pub, frame, W * sizeof(uint16_t), 0) < 0;
    msgpack_sbuffer_destroy(&buf);
    return rc ? -1 : 0;
}

/* The integer under `key` in a msgpack map, or -1. */
static int64_t map_int(const msgpack_object *map, const char *key) {
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size) == 0 &&
            kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            return (int64_t)kv->val.via.u64;
    }
    return -1;
}

/* Receive one denoised message (timeout in ms); copies its frames into out[seq]. Returns n,
 * -2 for a message of another stream (a longer name sharing the prefix), -1 on timeout or error. */
static int recv_denoised(void *sub, const char *topic, float *out, int n_frames, int timeout_ms, int64_t *seq_out) {
    zmq_pollitem_t item = {sub, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(&item, 1, timeout_ms) <= 0) return -1;
    zmq_msg_t parts[3];
    int more = 1, k = 0;
    for (; more && k < 3; k++) {
        zmq_msg_init(&parts[k]);
        zmq_msg_recv(&parts[k], sub, 0);
        more = zmq_msg_more(&parts[k]);
    }
    int n = -1;
    if (k == 3 && !more && (zmq_msg_size(&parts[0]) != strlen(topic) ||
                            memcmp(zmq_msg_data(&parts[0]), topic, strlen(topic)) != 0)) {
        n = -2;
    } else if (k == 3 && !more) {
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        if (msgpack_unpack_next(&up, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), NULL) == MSGPACK_UNPACK_SUCCESS
            && up.data.type == MSGPACK_OBJECT_MAP) {
            int64_t seq = map_int(&up.data, "seq"), cnt = map_int(&up.data, "n");
            /* output frames are float32 "<f4" of the input's shape */
            if (seq >= 0 && cnt > 0 && seq + cnt <= n_frames && zmq_msg_size(&parts[2]) == (size_t)cnt * W * 4) {
                memcpy(out + seq * W, zmq_msg_data(&parts[2]), (size_t)cnt * W * 4);
                *seq_out = seq;
                n = (int)cnt;
            }
        }
        msgpack_unpacked_destroy(&up);
    }
    for (int i = 0; i < k; i++) zmq_msg_close(&parts[i]);
    return n;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s SERVICE_INPUT SERVICE_OUTPUT STREAM N_FRAMES OUT.f32\n", argv[0]);
        return 2;
    }
    const char *stream = argv[3];
    int n_frames = atoi(argv[4]);
    void *ctx = zmq_ctx_new();
    void *pub = zmq_socket(ctx, ZMQ_PUB), *sub = zmq_socket(ctx, ZMQ_SUB);
    char topic[160];
    snprintf(topic, sizeof topic, "denoised/%s", stream);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, topic, strlen(topic));
    if (zmq_connect(pub, argv[1]) || zmq_connect(sub, argv[2])) {
        fprintf(stderr, "cannot connect: %s\n", zmq_strerror(zmq_errno()));
        return 1;
    }
    float *out = calloc((size_t)n_frames * W, sizeof(float));
    uint16_t frame[W];
    /* PUB drops messages until the connection is up (the slow joiner): send probe frames on
     * the stream "<stream>.probe" (its outputs match our subscription's prefix) until one comes
     * back, then the real ones. */
    char probe[160];
    snprintf(probe, sizeof probe, "%s.probe", stream);
    for (int j = 0; j < W; j++) frame[j] = 100;
    int up = 0;
    for (int t = 0; t < 200 && !up; t++) {
        send_frame(pub, probe, (uint64_t)t, frame);
        zmq_pollitem_t item = {sub, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 50) > 0) up = 1;
    }
    if (!up) { fprintf(stderr, "the service never answered\n"); return 1; }
    int got = 0;
    int64_t next = 0, seq = 0;
    for (int i = 0; i < n_frames; i++) {
        for (int j = 0; j < W; j++) frame[j] = (uint16_t)(200 + (7 * i + 13 * j) % 50);
        if (send_frame(pub, stream, (uint64_t)i, frame)) { fprintf(stderr, "send failed\n"); return 1; }
        struct timespec pause = {0, 10000000};  /* 100 Hz */
        nanosleep(&pause, NULL);
    }
    while (got < n_frames) {
        int n = recv_denoised(sub, topic, out, n_frames, 5000, &seq);
        if (n == -2) continue;
        if (n < 0) break;
        if (seq != next) { fprintf(stderr, "expected seq %lld, got %lld\n", (long long)next, (long long)seq); }
        next = seq + n;
        got += n;
    }
    FILE *f = fopen(argv[5], "wb");
    fwrite(out, sizeof(float), (size_t)n_frames * W, f);
    fclose(f);
    printf("received %d of %d denoised frames of stream %s\n", got, n_frames, stream);
    free(out);
    zmq_close(pub);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    return got == n_frames ? 0 : 1;
}
