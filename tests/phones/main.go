// Command phones is many users' phones in one process, for the density benchmark: phone i
// joins room <prefix>-<i> as identity phone-<i>, the identity its user's bridge session
// targets, with a token it signs itself with the test server's key. TEST-ONLY CODE.
//
// Modes (-mode):
//   - silent: joined, sending nothing;
//   - data: the microphone as the phone sends it, 100 lossy data packets a second without a
//     topic, each a 1-byte rolling sequence number and 320 bytes of 16 kHz mono PCM16 (a
//     440 Hz tone); one ticker sends every phone's packet, so a phone costs a send, not a
//     goroutine's timer;
//   - track: an Opus microphone track, from pre-encoded 20 ms packets read from an Ogg Opus
//     file (-opus) and looped, so no phone encodes anything. tone-440.opus beside this file is
//     1 s of 440 Hz, made with `sox -n -r 48000 -c 1 -b 16 tone.wav synth 1 sine 440 vol 0.3`
//     and `opusenc --framesize 20 --bitrate 32 --max-delay 0 tone.wav tone-440.opus`.
//
// With -count each data packet's first sample is the packet's number (mod 32768) instead of
// the tone's, so a client counts the packets it lost (the payload rule cuts the 1-byte
// sequence number before the client sees it).
//
// With -listen each phone subscribes to the tracks published in its room (the bridge's) and
// counts the RTP packets and bytes it reads, without decoding; without it nothing is
// subscribed and the server forwards nothing to the phones.
//
// -user names one phone the way the end-to-end scenarios do: room <user>, identity
// phone-<user>.
//
// It prints "READY <joined>" once every phone has joined (or failed to), then, on SIGTERM or
// SIGINT or after -seconds, leaves every room and prints RESULT key=value lines: phones
// joined, join failures, packets sent and failed, RTP packets and bytes read, its own CPU
// seconds, and the wall time it ran. With -report it also prints, every that often, a line
// "AT <unix ms> <packets sent> <RTP packets read> <tracks heard>", so a test can tell when
// audio stopped and came back, and how many of the tracks subscribed have sent anything.
package main

import (
	"bufio"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/livekit/protocol/auth"
	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/pion/webrtc/v4"
	"github.com/pion/webrtc/v4/pkg/media"
)

const (
	// Samples in one 10 ms packet of 16 kHz mono PCM16, and its bytes after the sequence.
	packetSamples = 160
	packetPCM     = 2 * packetSamples
	packetPeriod  = 10 * time.Millisecond
	opusPeriod    = 20 * time.Millisecond
)

type counters struct {
	joined, joinFailed, sent, sendFailed, rtpPackets, rtpBytes, tracksHeard atomic.Int64
}

func main() {
	url := flag.String("url", "ws://10.99.0.1:7880", "the LiveKit server")
	key := flag.String("key", "e2e-key", "API key the tokens are signed with")
	secret := flag.String("secret", "", "API secret the tokens are signed with")
	rooms := flag.Int("rooms", 1, "phones, one per room")
	first := flag.Int("first", 0, "index of the first room")
	prefix := flag.String("prefix", "density", "room names are <prefix>-<i>")
	mode := flag.String("mode", "data", "silent, data or track")
	opusFile := flag.String("opus", "", "Ogg Opus file for -mode track (20 ms packets)")
	listen := flag.Bool("listen", false, "subscribe to the room's tracks and count their RTP")
	seconds := flag.Int("seconds", 0, "leave after this long (0: on SIGTERM)")
	parallel := flag.Int("parallel", 8, "joins in flight at once")
	user := flag.String("user", "", "one phone: room <user>, identity phone-<user>")
	report := flag.Duration("report", 0, "print the counters this often (0: never)")
	count := flag.Bool("count", false, "-mode data: each packet's first sample is its number (mod 32768), so a client counts what it lost")
	flag.Parse()
	if *user != "" && *rooms != 1 {
		fail("-user is one phone: -rooms must be 1")
	}
	if *secret == "" {
		fail("-secret is required")
	}
	if *mode != "silent" && *mode != "data" && *mode != "track" {
		fail("-mode must be silent, data or track, not %q", *mode)
	}
	var opus [][]byte
	if *mode == "track" {
		var err error
		if opus, err = readOpus(*opusFile); err != nil {
			fail("-opus %q: %v", *opusFile, err)
		}
	}

	var c counters
	started := time.Now()
	phones := make([]*lksdk.Room, *rooms)
	tracks := make([]*lksdk.LocalTrack, *rooms)
	var wg sync.WaitGroup
	slots := make(chan struct{}, *parallel)
	for i := range phones {
		wg.Add(1)
		slots <- struct{}{}
		go func(i int) {
			defer wg.Done()
			defer func() { <-slots }()
			identity, name := fmt.Sprintf("phone-%d", *first+i), fmt.Sprintf("%s-%d", *prefix, *first+i)
			if *user != "" {
				identity, name = "phone-"+*user, *user
			}
			room, track, err := join(*url, *key, *secret, identity, name, *mode, *listen, &c)
			if err != nil {
				c.joinFailed.Add(1)
				fmt.Fprintf(os.Stderr, "%s: %v\n", identity, err)
				return
			}
			c.joined.Add(1)
			phones[i], tracks[i] = room, track
		}(i)
	}
	wg.Wait()
	fmt.Printf("READY %d\n", c.joined.Load())

	stop := make(chan struct{})
	var senders sync.WaitGroup
	if *report > 0 {
		senders.Add(1)
		go func() { defer senders.Done(); reportEvery(*report, stop, &c) }()
	}
	switch *mode {
	case "data":
		senders.Add(1)
		go func() { defer senders.Done(); sendData(phones, *count, stop, &c) }()
	case "track":
		senders.Add(1)
		go func() { defer senders.Done(); sendOpus(tracks, opus, stop, &c) }()
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	if *seconds > 0 {
		select {
		case <-signals:
		case <-time.After(time.Duration(*seconds) * time.Second):
		}
	} else {
		<-signals
	}
	close(stop)
	senders.Wait()
	for _, room := range phones {
		if room != nil {
			wg.Add(1)
			go func(r *lksdk.Room) { defer wg.Done(); r.Disconnect() }(room)
		}
	}
	wg.Wait()

	var usage syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &usage)
	cpu := float64(usage.Utime.Nano()+usage.Stime.Nano()) / 1e9
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "RESULT phones_joined=%d\n", c.joined.Load())
	fmt.Fprintf(out, "RESULT phones_join_failed=%d\n", c.joinFailed.Load())
	fmt.Fprintf(out, "RESULT phones_sent=%d\n", c.sent.Load())
	fmt.Fprintf(out, "RESULT phones_send_failed=%d\n", c.sendFailed.Load())
	fmt.Fprintf(out, "RESULT phones_rtp_packets=%d\n", c.rtpPackets.Load())
	fmt.Fprintf(out, "RESULT phones_rtp_bytes=%d\n", c.rtpBytes.Load())
	fmt.Fprintf(out, "RESULT phones_cpu_s=%.3f\n", cpu)
	fmt.Fprintf(out, "RESULT phones_wall_s=%.3f\n", time.Since(started).Seconds())
	_ = out.Flush()
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "phones: "+format+"\n", args...)
	os.Exit(2)
}

// reportEvery prints the counters every `period` until stop is closed.
func reportEvery(period time.Duration, stop <-chan struct{}, c *counters) {
	ticker := time.NewTicker(period)
	defer ticker.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-ticker.C:
			fmt.Printf("AT %d %d %d %d\n", now.UnixMilli(), c.sent.Load(), c.rtpPackets.Load(), c.tracksHeard.Load())
		}
	}
}

func join(url, key, secret, identity, name, mode string, listen bool, c *counters) (*lksdk.Room, *lksdk.LocalTrack, error) {
	grant := &auth.VideoGrant{RoomJoin: true, Room: name}
	grant.SetCanPublish(true)
	grant.SetCanPublishData(true)
	grant.SetCanSubscribe(listen)
	token, err := auth.NewAccessToken(key, secret).
		SetIdentity(identity).
		SetValidFor(24 * time.Hour).
		AddGrant(grant).
		ToJWT()
	if err != nil {
		return nil, nil, err
	}
	callback := lksdk.NewRoomCallback()
	if listen {
		callback.OnTrackSubscribed = func(track *webrtc.TrackRemote, _ *lksdk.RemoteTrackPublication, _ *lksdk.RemoteParticipant) {
			go readRTP(track, c)
		}
	}
	room, err := lksdk.ConnectToRoomWithToken(url, token, callback, lksdk.WithAutoSubscribe(listen))
	if err != nil {
		return nil, nil, err
	}
	if mode != "track" {
		return room, nil, nil
	}
	track, err := lksdk.NewLocalSampleTrack(webrtc.RTPCodecCapability{
		MimeType: webrtc.MimeTypeOpus, ClockRate: 48000, Channels: 2,
	})
	if err == nil {
		_, err = room.LocalParticipant.PublishTrack(track, &lksdk.TrackPublicationOptions{
			Name: "microphone", Source: livekit.TrackSource_MICROPHONE,
		})
	}
	if err != nil {
		room.Disconnect()
		return nil, nil, err
	}
	return room, track, nil
}

func readRTP(track *webrtc.TrackRemote, c *counters) {
	buf := make([]byte, 1500)
	for first := true; ; first = false {
		n, _, err := track.Read(buf)
		if err != nil {
			return
		}
		if first {
			c.tracksHeard.Add(1)
		}
		c.rtpPackets.Add(1)
		c.rtpBytes.Add(int64(n))
	}
}

// sendData sends every phone's next packet every 10 ms, on a schedule that does not drift:
// a late tick sends the packets it owes at once, as a phone's network does after a stall.
func sendData(phones []*lksdk.Room, count bool, stop <-chan struct{}, c *counters) {
	tone := make([]byte, 100*packetPCM) // 1 s of 440 Hz at 16 kHz: a whole number of periods
	for n := 0; n < len(tone)/2; n++ {
		v := int16(math.Round(0.3 * 32767 * math.Sin(2*math.Pi*440*float64(n)/16000)))
		tone[2*n], tone[2*n+1] = byte(v), byte(uint16(v)>>8)
	}
	payload := make([]byte, 1+packetPCM)
	start := time.Now()
	var seq int64
	for {
		due := start.Add(time.Duration(seq) * packetPeriod)
		select {
		case <-stop:
			return
		case <-time.After(time.Until(due)):
		}
		for ; !time.Now().Before(start.Add(time.Duration(seq) * packetPeriod)); seq++ {
			payload[0] = byte(seq)
			at := int(seq%100) * packetPCM
			copy(payload[1:], tone[at:at+packetPCM])
			if count {
				binary.LittleEndian.PutUint16(payload[1:3], uint16(seq%32768))
			}
			for _, room := range phones {
				if room == nil {
					continue
				}
				// PublishDataPacket marshals the packet before returning: one buffer serves all.
				if err := room.LocalParticipant.PublishDataPacket(lksdk.UserData(payload), lksdk.WithDataPublishReliable(false)); err != nil {
					c.sendFailed.Add(1)
				} else {
					c.sent.Add(1)
				}
			}
		}
	}
}

// sendOpus writes every phone's next 20 ms Opus packet every 20 ms, looping the file.
func sendOpus(tracks []*lksdk.LocalTrack, packets [][]byte, stop <-chan struct{}, c *counters) {
	ticker := time.NewTicker(opusPeriod)
	defer ticker.Stop()
	for n := 0; ; n++ {
		select {
		case <-stop:
			return
		case <-ticker.C:
		}
		sample := media.Sample{Data: packets[n%len(packets)], Duration: opusPeriod}
		for _, track := range tracks {
			if track == nil {
				continue
			}
			if err := track.WriteSample(sample, nil); err != nil {
				c.sendFailed.Add(1)
			} else {
				c.sent.Add(1)
			}
		}
	}
}

// readOpus reads an Ogg Opus file's audio packets: every packet of every page after the two
// header packets (OpusHead, OpusTags), joined across lacing values of 255 as Ogg does.
func readOpus(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var packets [][]byte
	var partial []byte
	for len(data) > 0 {
		if len(data) < 27 || string(data[:4]) != "OggS" {
			return nil, errors.New("not an Ogg page")
		}
		segments := int(data[26])
		if len(data) < 27+segments {
			return nil, errors.New("truncated page header")
		}
		lacing := data[27 : 27+segments]
		body := data[27+segments:]
		for _, n := range lacing {
			if len(body) < int(n) {
				return nil, errors.New("truncated page")
			}
			partial = append(partial, body[:n]...)
			body = body[n:]
			if n < 255 {
				packets = append(packets, partial)
				partial = nil
			}
		}
		data = body
	}
	if len(packets) < 3 {
		return nil, errors.New("no audio packets")
	}
	return packets[2:], nil
}
