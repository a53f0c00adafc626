package embedraft_test

import (
	"io"
	"net/http"

	"github.com/embedraft/embedraft"
)

func readAll(resp *http.Response) string {
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// nopService is an IService with no state.
type nopService struct{}

func (nopService) Commit([]byte) error                                  { return nil }
func (nopService) PreProcessData(b []byte) (interface{}, []byte, error) { return nil, b, nil }
func (nopService) GetInit() ([]byte, error)                             { return nil, nil }
func (nopService) ResetSnap([]byte) error                               { return nil }
func (nopService) GetSnapshot() ([]byte, error)                         { return nil, nil }
func (nopService) SetRaft(embedraft.IRaftSender)                        {}
